"""After an outage, projector works again as soon as the database is back, not when the
connection pool's own backoff (1, 2, 4 ... seconds between its attempts) next tries.

The pool's backoff is made a minute long here: a runner that waited it out would not project
within the tests' guard; one that reconnects once its own probe finds the database back does.
"""

from __future__ import annotations

import anyio
import pytest
from psycopg_pool.base import AttemptWithBackoff

from projector.errors import DatabaseUnavailableError
from projector.localpg import LocalCluster
from projector.storage import database, migrate
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

POOL_BACKOFF = 60.0  # seconds before the pool's next attempt after a failed one
GUARD = 30.0  # well inside it


@pytest.fixture
def slow_pool_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AttemptWithBackoff, "INITIAL_DELAY", POOL_BACKOFF)


async def _restart(cluster: LocalCluster, *, down_for: float) -> None:
    await anyio.to_thread.run_sync(cluster.stop)
    await anyio.sleep(down_for)
    await anyio.to_thread.run_sync(cluster.start)


async def test_the_pool_makes_the_attempts_its_backoff_put_off_when_told_the_database_is_back(
    throwaway_cluster: LocalCluster, slow_pool_backoff: None
) -> None:
    async with database.open_pool(throwaway_cluster.url, max_size=2) as pool:
        await anyio.to_thread.run_sync(throwaway_cluster.stop)
        # The pool finds its connection broken, fails to replace it, and puts the next try
        # off by POOL_BACKOFF.
        with pytest.raises(DatabaseUnavailableError):
            async with database.pooled(pool, doing="reading") as conn:
                await conn.execute("SELECT 1")
        await eventually(lambda: pool.get_stats().get("connections_errors", 0) > 0)
        await anyio.to_thread.run_sync(throwaway_cluster.start)

        pool.reconnect_now()

        with anyio.fail_after(GUARD):
            async with pool.connection(timeout=GUARD) as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)


async def test_a_runner_projects_again_once_the_database_is_back_not_once_its_pool_retries(
    throwaway_cluster: LocalCluster, slow_pool_backoff: None
) -> None:
    url = throwaway_cluster.url
    migrate.install_message_store(url)
    migrate.upgrade(url)
    await write_events(url, {f"account-{i}": 1 for i in range(5)})
    recorder = Recorder()
    settings = settings_for(url, categories=("account",), until_caught_up=False)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, recorder.projection(), settings)
        await eventually(lambda: recorder.handled == 5)
        await _restart(throwaway_cluster, down_for=1)
        await write_events(url, {"account-new": 1})

        # At least once: what was handled before may come again; the new event must come.
        await eventually(lambda: "account-new" in recorder.positions, within=GUARD)
        tasks.cancel_scope.cancel()
