"""A runner that starts while its database does not answer yet (a restart, a server still
starting) waits for it for up to ``start_wait`` seconds, logging ``reconnecting``; a URL that
cannot work as given (an unknown host, a refused login) fails at once (FAULTS.md entry 6)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from projector.errors import DatabaseLoginError, DatabaseUnavailableError
from projector.localpg import LocalCluster, free_port
from projector.storage import migrate
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


def _reconnecting(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == "reconnecting"]


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}@{parts.hostname}:{parts.port}"))


async def test_a_runner_started_while_the_server_is_down_waits_for_it_then_projects(
    throwaway_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    url = throwaway_cluster.url
    migrate.install_message_store(url)
    migrate.upgrade(url)
    await write_events(url, {f"account-{i}": 3 for i in range(10)})
    throwaway_cluster.stop()
    recorder = Recorder()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(
            run_projection, recorder.projection(), settings_for(url, categories=("account",))
        )
        await eventually(lambda: len(_reconnecting(caplog)) > 0)
        await anyio.to_thread.run_sync(throwaway_cluster.start)

    assert recorder.handled == 30
    assert _reconnecting(caplog)[0].__dict__["doing"] == "connecting to the database to start"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://someone@no-such-host.invalid/shop",  # the host name does not resolve
        "role",  # the server refuses the role
        "database",  # the server has no such database
    ],
)
async def test_a_url_that_cannot_work_fails_at_once_without_waiting(
    own_store_url: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    if url == "role":
        url = _as_user(own_store_url, "no_such_role")
    elif url == "database":
        url = own_store_url.rsplit("/", 1)[0] + "/no_such_database"
    settings = settings_for(url, categories=("account",), start_wait=600)

    with pytest.raises(DatabaseLoginError, match="cannot connect to the database"):
        await run_projection(Recorder().projection(), settings)

    assert _reconnecting(caplog) == []


async def test_a_server_that_stays_away_ends_the_start_after_start_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"  # nothing listens there
    settings = settings_for(url, categories=("account",), start_wait=0.5)

    with pytest.raises(DatabaseUnavailableError, match=r"more than 0\.5 s .*\(start_wait\)"):
        await run_projection(Recorder().projection(), settings)

    assert _reconnecting(caplog)
