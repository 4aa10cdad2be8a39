"""Rebuilding a projection beside its live version, in-process against a real server: the
states a version goes through, the readers' views, the refusals, and the replay of one stream.

The end-to-end run with real processes (writers, a reader polling all through, a SIGKILL) is
tests/e2e/test_rebuild_cli.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import psycopg
import pytest

from projector import Event, Projection, replaying, write_message
from projector.admin import rebuild, rebuild_status, replay
from projector.admin.verify import verify
from projector.errors import ConfigurationError, MemberBusyError, RebuildRefusedError
from projector.model.versions import VersionState
from projector.runner import Runner
from projector.storage.database import Connection, connect
from tests.support.balances import balances_projection, write_transactions
from tests.support.ledger import balances_in, folded, ledger
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(url: str, projection: Projection, **settings: object) -> AsyncIterator[None]:
    """``projection`` projecting in the background for the length of the block."""
    runner = Runner(projection, settings_for(url, until_caught_up=False, **settings))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(runner.run)
        yield
        tasks.cancel_scope.cancel()


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Connection]:
    conn = await connect(url)
    async with conn:
        yield conn


async def _caught_up(url: str, name: str, version: int) -> bool:
    async with connected(url) as conn:
        rows = await rebuild_status.collect(conn, name)
    found = next(row for row in rows if row.version.version == version)
    return found.lag_events == 0 and found.running


async def test_a_version_is_built_beside_the_live_one_cut_over_to_and_rolled_back(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=20, events=300, seed=1)
    v1, v2 = balances_projection(), ledger(2)
    async with running(url, v1, categories=["account"]):
        await eventually(lambda: balances_in(url, "public") == folded(url))
        async with connected(url) as conn:
            started = await rebuild.start(conn, v2)
        assert (started.version.state, started.recorded, started.shown) == (
            VersionState.BUILDING,
            True,
            ["balances"],
        )
        assert balances_in(url, "balances") == folded(url)  # the readers' view: version 1

        async with running(url, v2):
            # Version 1 keeps serving what is written while version 2 rebuilds.
            await write_transactions(url, accounts=25, events=200, seed=2)
            await eventually(lambda: balances_in(url, "balances") == folded(url))
            await eventually(lambda: _caught_up(url, "balances", 2))
            assert balances_in(url, "balances_v2") == folded(url)
            async with connected(url) as conn:
                switched = await rebuild.cutover(conn, "balances", max_lag=0, within=10)
                assert (switched.live.version, switched.left.state) == (2, VersionState.PREVIOUS)
                assert _events_column(url)  # readers see version 2's schema now
                assert balances_in(url, "balances") == folded(url)

                with pytest.raises(MemberBusyError):
                    await rebuild.retire(conn, "balances", 1)  # its runner is up

                back = await rebuild.rollback(conn, "balances", within=10)
                assert (back.live.version, back.left.state) == (1, VersionState.BUILDING)
                assert not _events_column(url)
                assert balances_in(url, "balances") == folded(url)
                await rebuild.cutover(conn, "balances", max_lag=0, within=10)

    async with connected(url) as conn:
        retired = await rebuild.retire(conn, "balances", 1)
        rows = await rebuild_status.collect(conn, "balances")
    assert (retired.schema_dropped, retired.checkpoints) == (False, 1)
    assert [(row.version.version, row.version.state) for row in rows] == [
        (1, VersionState.RETIRED),
        (2, VersionState.LIVE),
    ]
    assert balances_in(url, "public") != {}  # a version in public keeps its tables


def _events_column(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_schema = 'balances' AND table_name = 'balances'"
            " AND column_name = 'events'"
        ).fetchone()
    return row is not None and row[0] == 1


async def test_the_first_version_with_setup_goes_live_on_its_first_run(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=10, events=100, seed=3)
    await run_projection(ledger(1), settings_for(url))

    assert balances_in(url, "balances_v1") == folded(url)
    assert balances_in(url, "balances") == folded(url)
    async with connected(url) as conn:
        [status] = await rebuild_status.collect(conn, "balances")
    assert (status.version.state, status.version.group, status.version.schema) == (
        VersionState.LIVE,
        "balances",
        "balances_v1",
    )


async def test_a_version_that_is_not_recorded_does_not_run(own_store_url: str) -> None:
    url = own_store_url
    await write_transactions(url, accounts=5, events=20, seed=4)
    await run_projection(ledger(1), settings_for(url))

    with pytest.raises(ConfigurationError, match="rebuild start"):
        await run_projection(ledger(2), settings_for(url))


async def test_the_commands_refuse_what_the_states_do_not_allow(own_store_url: str) -> None:
    url = own_store_url
    await write_transactions(url, accounts=5, events=50, seed=5)
    await run_projection(ledger(1), settings_for(url))
    async with connected(url) as conn:
        with pytest.raises(RebuildRefusedError, match="no previous version"):
            await rebuild.rollback(conn, "balances", within=1)
        with pytest.raises(RebuildRefusedError, match="is live"):
            await rebuild.retire(conn, "balances", 1)
        with pytest.raises(ConfigurationError, match="has no version 7"):
            await rebuild.retire(conn, "balances", 7)
        with pytest.raises(RebuildRefusedError, match="no building version"):
            await rebuild.cutover(conn, "balances", max_lag=0, within=0)
        await rebuild.start(conn, ledger(2))
        with pytest.raises(ConfigurationError, match="recorded already"):
            await rebuild.start(conn, ledger(2))
        # Version 2 never ran: nothing to go live with.
        with pytest.raises(RebuildRefusedError, match="no checkpoint"):
            await rebuild.cutover(conn, "balances", max_lag=0, within=0.5)
        with pytest.raises(ConfigurationError, match="no setup hook"):
            await rebuild.start(conn, balances_projection_v3())


def balances_projection_v3() -> Projection:
    projection = Projection("balances", version=3)

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None: ...

    return projection


async def test_cutover_refuses_a_version_that_lags_or_does_not_verify(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=10, events=200, seed=6)
    await run_projection(ledger(1), settings_for(url))
    async with connected(url) as conn:
        await rebuild.start(conn, ledger(2))
    slow = ledger(2, delay=0.2)
    async with running(url, slow, batch_size=5, max_concurrent_streams=1), connected(url) as conn:
        with pytest.raises(RebuildRefusedError, match="lags"):
            await rebuild.cutover(conn, "balances", max_lag=0, within=0.5)
    await run_projection(ledger(2), settings_for(url))
    with psycopg.connect(url) as db:
        db.execute("DELETE FROM balances_v2.balances WHERE account = 'account-1'")
    async with connected(url) as conn:
        found = await verify(conn, "balances", query="SELECT account, balance FROM balances")
        assert not found.matches
        assert "table balances has 10 row(s) in version 1 and 9 in version 2" in found.differences()
        assert "only in 1: ('account-1'," in found.differences()[1]
        # (The runner is stopped, so the lag refusal comes first; verify is what --force skips.)
        with pytest.raises(RebuildRefusedError, match="has no runner up"):
            await rebuild.cutover(conn, "balances", max_lag=0, within=0)


async def test_a_reader_blocked_by_a_cutover_reads_the_new_version_without_an_error(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=10, events=100, seed=7)
    await run_projection(ledger(1), settings_for(url))
    async with connected(url) as conn:
        await rebuild.start(conn, ledger(2))
    await run_projection(ledger(2), settings_for(url))
    expected = folded(url)
    seen: list[int] = []
    async with running(url, ledger(2)), running(url, ledger(1)):
        await eventually(lambda: _caught_up(url, "balances", 2))
        holder = await psycopg.AsyncConnection.connect(url)
        async with holder, connected(url) as conn:
            # A reader in the middle of a transaction holds version 1's view: the cutover
            # waits for it, and a second reader queues behind the cutover.
            await holder.execute("SELECT count(*) FROM balances.balances")

            async def cut_over() -> None:
                await rebuild.cutover(conn, "balances", max_lag=0, within=10)

            async def second_reader() -> None:
                await anyio.sleep(0.5)
                async with await psycopg.AsyncConnection.connect(url) as reader:
                    cursor = await reader.execute("SELECT sum(events) FROM balances.balances")
                    row = await cursor.fetchone()
                    assert row is not None
                    seen.append(int(row[0]))  # `events` is version 2's column

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(cut_over)
                tasks.start_soon(second_reader)
                await anyio.sleep(1.0)
                assert not seen  # still queued behind the cutover's lock
                await holder.commit()
    assert seen == [100]
    assert balances_in(url, "balances") == expected


async def test_replaying_one_stream_of_a_transactional_projection_is_exact_beside_its_runner(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=5, events=100, seed=8)
    v1 = ledger(1)
    await run_projection(v1, settings_for(url))
    with psycopg.connect(url) as db:  # a bug left one account wrong
        db.execute("UPDATE balances_v1.balances SET balance = 0 WHERE account = 'account-2'")
    async with running(url, v1):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_write_more, url)
            for _ in range(5):
                async with connected(url) as conn:
                    done = await replay.replay(conn, v1, "account-2")
                assert done.applied is not None
                assert done.applied >= 1
                await anyio.sleep(0.1)
        await eventually(lambda: balances_in(url, "balances") == folded(url))


async def _write_more(url: str) -> None:
    for seed in range(10):
        await write_transactions(url, accounts=5, events=20, seed=100 + seed)


async def test_replay_refuses_a_transactional_projection_without_a_reset_hook(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=2, events=10, seed=10)
    async with connected(url) as conn:
        with pytest.raises(ConfigurationError, match="reset_stream"):
            await replay.replay(conn, balances_projection(), "account-1")


async def test_an_at_least_once_replay_is_delivered_again_in_order_by_the_runner(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {"orders-1": 30, "orders-2": 10})
    recorder = Recorder("orders")
    projection = recorder.projection()
    async with running(url, projection, categories=["orders"]):
        await recorder.wait_until_handled(40)
        async with connected(url) as conn:
            done = await replay.replay(conn, projection, "orders-1")
        assert (done.applied, done.runner_up) == (None, True)
        await recorder.wait_until_handled(70)
        await write_events_after(url)
        await eventually(lambda: recorder.positions["orders-1"][-1] == 30)
    assert recorder.positions["orders-1"] == [*range(30), *range(31)]
    assert recorder.overlaps == []


async def write_events_after(url: str) -> None:
    async with connected(url) as conn:
        await write_message(conn, "orders-1", "Counted", {"n": 30}, expected_version=29)
        await conn.commit()


async def test_handlers_of_a_building_version_are_told_they_are_replaying(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {"mail-1": 3})
    told: dict[int, set[bool]] = {1: set(), 2: set()}

    def mailer(version: int) -> Projection:
        projection = Projection("mailer", categories=["mail"], version=version)

        @projection.handler
        async def send(stream_name: str, events: list[Event]) -> None:
            told[version].add(replaying())

        return projection

    await run_projection(mailer(1), settings_for(url))
    async with connected(url) as conn:
        started = await rebuild.start(conn, mailer(2))
    assert started.version.schema is None
    await run_projection(mailer(2), settings_for(url))
    assert told == {1: {False}, 2: {True}}
    assert not replaying()


GROUPS: dict[str, list[dict[str, object]]] = {
    "fixed": [{"member": 0, "group_size": 2}, {"member": 1, "group_size": 2}],
    "elastic": [
        {"elastic": True, "buckets": 4, "heartbeat": 0.2, "bucket_lease": 2.0},
        {"elastic": True, "buckets": 4, "heartbeat": 0.2, "bucket_lease": 2.0},
    ],
}


@pytest.mark.parametrize("kind", sorted(GROUPS))
async def test_a_new_version_projects_as_a_consumer_or_elastic_group(
    own_store_url: str, kind: str
) -> None:
    url = own_store_url
    await write_transactions(url, accounts=20, events=200, seed=11)
    await run_projection(ledger(1), settings_for(url))
    async with connected(url) as conn:
        await rebuild.start(conn, ledger(2))
    first, second = GROUPS[kind]
    async with running(url, ledger(2), **first), running(url, ledger(2), **second):
        await eventually(lambda: _caught_up(url, "balances", 2))
        async with connected(url) as conn:
            status = next(
                row
                for row in await rebuild_status.collect(conn, "balances")
                if row.version.version == 2
            )
            assert status.members == (4 if kind == "elastic" else 2)
            with pytest.raises(MemberBusyError):
                await rebuild.retire(conn, "balances", 2)
            await rebuild.cutover(conn, "balances", max_lag=0, within=10)
    assert balances_in(url, "balances") == folded(url)
    async with connected(url) as conn:
        await rebuild.retire(conn, "balances", 1)


async def test_readers_are_never_switched_to_a_version_without_tables(own_store_url: str) -> None:
    url = own_store_url
    await write_transactions(url, accounts=5, events=30, seed=12)
    await run_projection(ledger(1), settings_for(url))
    outside = Projection("balances", categories=["account"], version=2)

    @outside.batch
    async def write_elsewhere(spans: dict[str, list[Event]]) -> None: ...

    async with connected(url) as conn:
        await rebuild.start(conn, outside)
    async with running(url, outside), connected(url) as conn:
        await eventually(lambda: _caught_up(url, "balances", 2))
        with pytest.raises(RebuildRefusedError, match="no tables in projector's database"):
            await rebuild.cutover(conn, "balances", max_lag=0, within=5, force=True)
    assert balances_in(url, "balances") == folded(url)  # still version 1's
