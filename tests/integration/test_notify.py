"""The opt-in wake-up trigger: a write notifies listeners with its category, on both stores."""

from __future__ import annotations

from functools import partial

import anyio
import pytest

from projector import write_message
from projector.errors import DatabaseUnavailableError
from projector.storage import notify
from projector.storage.database import Connection, connect
from tests.support.projecting import Recorder, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio


async def test_a_listener_is_woken_with_the_category_of_each_committed_write(
    database_url: str,
) -> None:
    notify.install(database_url)
    notify.install(database_url)  # installing again is harmless
    woken: list[str] = []
    arrived = anyio.Event()

    def wake(category: str) -> None:
        woken.append(category)
        if len(woken) >= 2:
            arrived.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            await tasks.start(partial(notify.listen, database_url, wake, outage_limit=5))
            conn = await connect(database_url)
            async with conn, conn.transaction():
                for i in range(5):
                    await write_message(conn, f"account-{i}", "Opened", {})
                await write_message(conn, "invoice-1", "Issued", {})
                await anyio.sleep(0.2)
                assert woken == [], "notified before the rows were committed"
            await arrived.wait()
            tasks.cancel_scope.cancel()

    assert sorted(woken) == ["account", "invoice"]


async def test_installed_tells_whether_the_trigger_is_there(own_store_url: str) -> None:
    conn = await connect(own_store_url)
    async with conn:
        assert not await notify.installed(conn)
        notify.install(own_store_url)
        assert await notify.installed(conn)


async def test_a_running_projector_is_woken_by_a_write_long_before_its_tail_sleep_ends(
    database_url: str,
) -> None:
    notify.install(database_url)
    recorder = Recorder()
    settings = settings_for(
        database_url, categories=("account",), until_caught_up=False, tail_sleep=30.0
    )

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await write_events(database_url, {"account-1": 1})
            await recorder.wait_until_handled(1)
            await anyio.sleep(0.5)  # the source is asleep at the tail now, for 30 s
            await write_events(database_url, {"account-2": 1})
            # Without the notification this would wait out the 30 s tail sleep.
            with anyio.fail_after(5):
                await recorder.wait_until_handled(2)
            tasks.cancel_scope.cancel()

    assert dict(recorder.positions) == {"account-1": [0], "account-2": [0]}


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
        with pytest.raises(DatabaseUnavailableError, match="looking for the wake-up trigger"):
            await notify.installed(conn)
