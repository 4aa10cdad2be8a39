"""The opt-in wake-up trigger: a write notifies listeners with its category, on both stores."""

from __future__ import annotations

import logging
from functools import partial

import anyio
import pytest

from projector import write_message
from projector.errors import DatabaseUnavailableError
from projector.storage import notify
from projector.storage.database import Connection, connect
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_a_listener_is_woken_with_the_category_of_each_committed_write(
    database_url: str,
) -> None:
    notify.install(database_url)
    notify.install(database_url)  # installing again is harmless
    woken: list[str] = []

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            await tasks.start(partial(notify.listen, database_url, woken.append, outage_limit=5))
            conn = await connect(database_url)
            async with conn, conn.transaction():
                for i in range(5):
                    await write_message(conn, f"account-{i}", "Opened", {})
                await write_message(conn, "invoice-1", "Issued", {})
                # Notifications reach a listener in the order they were sent: once this one,
                # sent after the writes, has arrived, anything the writes sent would have too.
                await _notify(database_url, "after the writes")
                await eventually(lambda: woken != [])
                assert woken == ["after the writes"], "notified before the rows were committed"
            await eventually(lambda: len(woken) == 3)
            tasks.cancel_scope.cancel()

    assert sorted(woken) == ["account", "after the writes", "invoice"]


async def _notify(url: str, payload: str) -> None:
    """Send a notification on projector's channel from a session of its own."""
    conn = await connect(url)
    async with conn:
        await conn.execute("SELECT pg_notify('projector_messages', %s)", (payload,))
        await conn.commit()


async def test_installed_tells_whether_the_trigger_is_there(own_store_url: str) -> None:
    conn = await connect(own_store_url)
    async with conn:
        assert not await notify.installed(conn)
        notify.install(own_store_url)
        assert await notify.installed(conn)


async def test_a_running_projector_is_woken_by_a_write_long_before_its_tail_sleep_ends(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    notify.install(database_url)
    await write_events(database_url, {"account-1": 1})
    recorder = Recorder()
    settings = settings_for(
        database_url, categories=("account",), until_caught_up=False, tail_sleep=3600.0
    )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await recorder.wait_until_handled(1)
            # The source logs reaching its tail just before it sleeps (for an hour), with
            # nothing to wait for in between: once the line is there, it sleeps.
            await eventually(lambda: _logged(caplog, "source_tail_reached"))
            await write_events(database_url, {"account-2": 1})
            await recorder.wait_until_handled(2)  # only the notification can wake it now
            tasks.cancel_scope.cancel()

    assert dict(recorder.positions) == {"account-1": [0], "account-2": [0]}


def _logged(caplog: pytest.LogCaptureFixture, action: str) -> bool:
    return any(getattr(record, "action", None) == action for record in caplog.records)


async def test_asking_for_the_trigger_on_a_lost_session_is_an_outage_not_a_driver_error(
    own_store_url: str, own_store_conn: Connection
) -> None:
    """A runner asks on its member's session as a tenure starts; a session cut then must
    start the tenure again (DatabaseUnavailableError), not end the run with psycopg's error.
    Found by the random fault suite."""
    conn = await connect(own_store_url, application_name="projector trigger-check")
    async with conn:
        await own_store_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'projector trigger-check'"
        )
        with pytest.raises(DatabaseUnavailableError, match="lost the database"):
            await notify.installed(conn)
