"""Failing handlers and database outages, in-process on real Postgres: failing streams held
out of the read path, retried with backoff and parked, their replays (`projector failing retry`
/ `skip`), stopping on failure, and a projector that outlives a database restart."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from itertools import pairwise

import anyio
import psycopg
import pytest

from projector import Event
from projector.errors import ConfigurationError, DatabaseUnavailableError, HandlerError
from projector.localpg import LocalCluster
from projector.model import failures
from projector.model.projection import Projection
from projector.runtime import replays
from projector.settings import Settings
from projector.storage import held, member_locks
from projector.storage.database import connect
from projector.storage.held import HeldState, HeldStream, HeldStreams
from tests.support.balances import balances_projection, projected_and_folded, write_transactions
from tests.support.failures import (
    CeilingJitter,
    Flaky,
    append,
    category_positions,
    contiguous,
    held_streams,
    message_store_on,
    stream_events,
)
from tests.support.projecting import (
    Recorder,
    checkpoint,
    run_projection,
    settings_for,
    stored_events,
    write_events,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

GROUP = "flaky"
BAD = "account-bad"


@pytest.fixture(autouse=True)
def quick_retry_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runners look for `projector failing retry` requests every 0.05 s instead of 2 s."""
    monkeypatch.setattr(replays, "LOOK_EVERY", 0.05)


def parking(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "categories": ("account",),
        "on_failure": "park",
        "retry_base": 0.01,
        "retry_max_attempts": 4,
        # Rare periodic commits, so that a run's end seldom lands on one (see
        # test_a_catch_up_that_ends_during_a_checkpoint_commit_still_commits_and_returns).
        "checkpoint_interval": 0.5,
    }
    values.update(overrides)
    return settings_for(url, **values)


@asynccontextmanager
async def running(projection: Projection, settings: Settings) -> AsyncIterator[list[str]]:
    """A projector running in the background for the block; yields a list that says how
    its run ended, if it ended before the block did."""
    ended: list[str] = []

    async def run() -> None:
        try:
            await run_projection(projection, settings)
        except BaseException as exc:
            ended.append(repr(exc))
            raise
        ended.append("returned")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        yield ended
        tasks.cancel_scope.cancel()


async def request_retry(url: str, stream_name: str | None) -> list[str]:
    conn = await connect(url)
    async with conn:
        return await held.request_retry(conn, GROUP, stream_name)


async def parked_row(url: str) -> HeldStream | None:
    """The group's one held stream, retrying or parked, if any."""
    rows = await held_streams(url, GROUP)
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


async def parked_with(url: str, error: str) -> bool:
    """Whether the stream is parked (and not waiting for a retry) after failing with ``error``."""
    row = await parked_row(url)
    return (
        row is not None
        and row.state is HeldState.PARKED
        and row.error == error
        and row.retry_requested_at is None
    )


async def unparked(url: str) -> bool:
    """Whether no stream is held any more: replayed to its end, and back in the live flow."""
    return await parked_row(url) is None


# -- retry, park, replay -------------------------------------------------------------------------


async def test_a_failing_stream_is_retried_with_growing_delays_then_parked_while_others_complete(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(failures, "_JITTER", CeilingJitter())
    caplog.set_level(logging.INFO, logger="projector")
    others = {f"account-{i}": 2 for i in range(2000)}
    await write_events(database_url, {**others, BAD: 3}, writers=6)
    flaky = Flaky(failing={BAD: "ledger row locked"})

    await run_projection(flaky.projection(), parking(database_url, max_concurrent_streams=20))

    times = flaky.call_times[BAD]
    assert len(times) == 4
    gaps = [later - earlier for earlier, later in pairwise(times)]
    assert all(gap >= delay for gap, delay in zip(gaps, [0.01, 0.02, 0.04], strict=True)), gaps
    failure_actions = {"stream_retry_scheduled", "stream_parked"}
    logged = [r.__dict__ for r in caplog.records if getattr(r, "action", None) in failure_actions]
    assert [(r["action"], r["attempt"], r.get("delay")) for r in logged] == [
        ("stream_retry_scheduled", 1, 0.01),
        ("stream_retry_scheduled", 2, 0.02),
        ("stream_retry_scheduled", 3, 0.04),
        ("stream_parked", 4, None),
    ]
    assert {name: flaky.handled[name] for name in others} == {name: [0, 1] for name in others}
    assert flaky.handled[BAD] == []
    assert flaky.overlaps == []
    head = (await category_positions(database_url, "account"))[-1]
    assert await checkpoint(database_url, GROUP, "account") == head + 1

    bad_events = await stream_events(database_url, BAD)
    row = await parked_row(database_url)
    assert row is not None
    assert (row.stream_name, row.category, row.position) == (BAD, "account", 0)
    assert (row.global_position, str(row.event_id)) == bad_events[0][1:]
    assert row.error == "RuntimeError: ledger row locked"
    assert "ledger row locked" in row.traceback
    assert row.attempts == 4
    assert row.retry_requested_at is None


async def test_a_retried_parked_stream_is_replayed_in_order_with_events_written_while_parked(
    database_url: str,
) -> None:
    await write_events(database_url, {**{f"account-{i}": 2 for i in range(50)}, BAD: 3})
    flaky = Flaky(failing={BAD: "ledger row locked"})
    await run_projection(flaky.projection(), parking(database_url))
    assert await parked_row(database_url) is not None
    await append(database_url, BAD, 2)  # written while parked: read and dropped
    flaky.failing.clear()

    settings = parking(database_url, until_caught_up=False)
    async with running(flaky.projection(), settings) as ended:
        await write_events(database_url, {"account-later": 2})
        await eventually(lambda: flaky.handled["account-later"] == [0, 1], within=10)
        assert flaky.handled[BAD] == []

        assert await request_retry(database_url, BAD) == [BAD]
        await eventually(lambda: len(flaky.handled[BAD]) == 5, within=10)
        await eventually(lambda: unparked(database_url), within=10)
        await append(database_url, BAD, 1)  # written after the replay: the stream runs again
        await eventually(lambda: len(flaky.handled[BAD]) == 6, within=10)
        head = (await category_positions(database_url, "account"))[-1]

        async def committed_to_the_head() -> bool:
            return await checkpoint(database_url, GROUP, "account") == head + 1

        await eventually(committed_to_the_head, within=10)
        assert ended == []

    assert flaky.handled[BAD] == [0, 1, 2, 3, 4, 5]
    assert all(contiguous(positions) for _, positions in flaky.calls)
    assert flaky.overlaps == []


async def test_skipping_a_parked_event_replays_the_stream_without_it(own_store_url: str) -> None:
    url = own_store_url
    await write_events(url, {**{f"account-{i}": 1 for i in range(50)}, BAD: 5})
    flaky = Flaky(poison={(BAD, 1)})
    await run_projection(flaky.projection(), parking(url, retry_max_attempts=2))
    row = await parked_row(url)
    assert row is not None
    poison = (await stream_events(url, BAD))[1]
    assert (row.position, row.global_position, str(row.event_id)) == poison
    assert row.error == f"RuntimeError: cannot handle {BAD} at 1"

    conn = await connect(url)
    async with conn:
        with pytest.raises(ConfigurationError, match="give the event id"):
            await held.skip_event(conn, GROUP, BAD, uuid.uuid4())
        skipped = await held.skip_event(conn, GROUP, BAD, row.event_id)
    assert skipped.position == 2
    assert skipped.retry_requested_at is not None

    async with running(flaky.projection(), parking(url, until_caught_up=False)) as ended:
        await eventually(lambda: 4 in flaky.handled[BAD], within=10)
        await eventually(lambda: unparked(url), within=10)
        assert ended == []

    assert flaky.first_deliveries(BAD) == [0, 2, 3, 4]


async def test_a_stream_that_fails_again_when_replayed_is_parked_again_and_others_go_on(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {**{f"account-{i}": 1 for i in range(20)}, BAD: 2})
    flaky = Flaky(failing={BAD: "first error"})
    settings = parking(url, until_caught_up=False, retry_max_attempts=2)
    async with running(flaky.projection(), settings) as ended:
        await eventually(lambda: parked_with(url, "RuntimeError: first error"), within=10)
        first = await parked_row(url)
        assert first is not None
        flaky.failing[BAD] = "second error"
        await request_retry(url, None)
        await eventually(lambda: parked_with(url, "RuntimeError: second error"), within=10)

        again = await parked_row(url)
        assert again is not None
        assert again.position == 0
        assert again.attempts == first.attempts + 1
        assert again.failed_at > first.failed_at
        assert again.held_at == first.held_at
        calls = len(flaky.call_times[BAD])
        await append(url, BAD, 1)
        await write_events(url, {f"account-new{i}": 2 for i in range(20)})
        await eventually(
            lambda: all(flaky.handled[f"account-new{i}"] == [0, 1] for i in range(20)), within=10
        )
        assert len(flaky.call_times[BAD]) == calls  # its new event was dropped, not run
        assert ended == []
    assert flaky.handled[BAD] == []


async def test_a_stream_failing_for_longer_than_stuck_after_is_reported_once(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = own_store_url
    await write_events(url, {BAD: 2, "account-1": 1})
    flaky = Flaky(failing={BAD: "down"})
    settings = parking(
        url, until_caught_up=False, retry_cap=0.05, retry_max_attempts=1000, stuck_after=0.3
    )
    async with running(flaky.projection(), settings) as ended:
        await anyio.sleep(1.0)
        del flaky.failing[BAD]
        await eventually(lambda: flaky.handled[BAD] == [0, 1], within=10)
        assert ended == []

    [stuck] = [r.__dict__ for r in caplog.records if getattr(r, "action", None) == "stream_stuck"]
    assert (stuck["stream"], stuck["state"]) == (BAD, "retrying")
    assert stuck["seconds"] >= 0.3
    assert stuck["failures"] >= 2
    assert await parked_row(url) is None


async def test_a_replay_that_fails_part_way_parks_the_stream_at_its_first_unhandled_event(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {BAD: 5, "account-1": 1})
    flaky = Flaky(failing={BAD: "down"})
    settings = parking(url, until_caught_up=False, retry_max_attempts=1)
    async with running(flaky.projection(), settings):
        await eventually(lambda: parked_with(url, "RuntimeError: down"), within=10)
        del flaky.failing[BAD]
        flaky.poison.add((BAD, 3))
        await request_retry(url, BAD)
        await eventually(
            lambda: parked_with(url, f"RuntimeError: cannot handle {BAD} at 3"), within=10
        )

    assert flaky.handled[BAD] == [0, 1, 2]
    row = await parked_row(url)
    assert row is not None
    assert (row.position, row.global_position, str(row.event_id)) == (
        await stream_events(url, BAD)
    )[3]


async def test_a_replay_whose_release_fails_never_runs_alongside_the_streams_own_calls(
    own_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = own_store_url
    await write_events(url, {BAD: 2, "account-1": 1})
    flaky = Flaky(failing={BAD: "down"})
    release = HeldStreams.release
    failed_once = anyio.Event()

    async def release_after_a_blink(self: HeldStreams, row: HeldStream) -> None:
        # The database blinks just after the first replay, and the release fails after a
        # while (as a connection timeout does), by which time the stream runs again.
        if failed_once.is_set():
            return await release(self, row)
        failed_once.set()
        await append(url, BAD, 1)
        await eventually(lambda: BAD in flaky.running, within=10)
        raise DatabaseUnavailableError("lost the database while writing held streams")

    monkeypatch.setattr(HeldStreams, "release", release_after_a_blink)
    settings = parking(url, until_caught_up=False, retry_max_attempts=1)
    async with running(flaky.projection(), settings) as ended:
        await eventually(lambda: parked_with(url, "RuntimeError: down"), within=10)
        del flaky.failing[BAD]
        flaky.slow[BAD] = 0.5
        await request_retry(url, BAD)
        await eventually(lambda: unparked(url), within=10)
        await eventually(lambda: not flaky.running, within=10)
        assert ended == []

    assert flaky.overlaps == []
    assert flaky.handled[BAD] == [0, 1, 2]


# -- stopping ------------------------------------------------------------------------------------


async def test_on_failure_stop_raises_and_keeps_the_checkpoint_before_the_failing_event(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {f"account-a{i}": 1 for i in range(300)})
    [bad_position] = await append(url, BAD, 1)
    await write_events(url, {f"account-b{i}": 1 for i in range(300)})
    flaky = Flaky(failing={BAD: "ledger row locked"})
    settings = parking(url, on_failure="stop", retry_max_attempts=3, batch_size=50)

    with pytest.RaisesGroup(
        pytest.RaisesExc(HandlerError, match=rf"stream '{BAD}' at position 0"),
        flatten_subgroups=True,
    ):
        await run_projection(flaky.projection(), settings)

    assert len(flaky.call_times[BAD]) == 3
    committed = await checkpoint(url, GROUP, "account")
    assert committed is not None
    assert bad_position - 50 < committed <= bad_position
    assert set(range(1, committed)) <= flaky.global_positions
    assert await parked_row(url) is None


async def test_a_catch_up_that_ends_during_a_checkpoint_commit_still_commits_and_returns(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, {f"account-{i}": 1 for i in range(300)})
    conn = await connect(url)
    async with conn:
        # A slow database: each checkpoint commit takes a second, so the catch-up (about
        # 0.3 s) ends while the first periodic commit is still running.
        await conn.execute(
            "CREATE FUNCTION projector.slowly() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER slowly BEFORE INSERT OR UPDATE ON projector.checkpoints"
            " FOR EACH ROW EXECUTE FUNCTION projector.slowly()"
        )
        await conn.commit()
    recorder = Recorder(delay=0.01)
    settings = settings_for(url, categories=("account",), batch_size=50, checkpoint_interval=0.01)

    await run_projection(recorder.projection(), settings)

    head = (await category_positions(url, "account"))[-1]
    assert await checkpoint(url, "recorder", "account") == head + 1


# -- outages -------------------------------------------------------------------------------------


async def test_a_running_projector_outlives_a_database_restart(
    throwaway_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    url = message_store_on(throwaway_cluster)
    before = {f"account-{i}": 3 for i in range(100)}
    after = {f"account-{i}": 3 for i in range(100, 200)}
    everything = {**before, **after}
    recorder = Recorder(delay=0.05)  # still handling what it read when the server goes away
    settings = settings_for(
        url, categories=("account",), until_caught_up=False, connect_timeout=2, outage_limit=60
    )

    def all_handled() -> bool:
        return all(
            set(recorder.positions[name]) == set(range(count)) for name, count in everything.items()
        )

    async with running(recorder.projection(), settings) as ended:
        await write_events(url, before)
        await eventually(lambda: recorder.handled >= 30, within=20)
        await anyio.to_thread.run_sync(throwaway_cluster.stop)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(throwaway_cluster.start)
        await write_events(url, after)
        await eventually(all_handled, within=60)
        head = (await category_positions(url, "account"))[-1]

        async def committed_to_the_head() -> bool:
            return await checkpoint(url, "recorder", "account") == head + 1

        await eventually(committed_to_the_head, within=10)
        assert ended == []

    assert recorder.overlaps == []
    assert all(contiguous(positions) for _, positions in recorder.calls)
    for name in everything:
        assert list(dict.fromkeys(recorder.positions[name])) == [0, 1, 2]
    actions = {getattr(record, "action", None) for record in caplog.records}
    assert {"reconnecting", "reconnected", "member_lock_lost", "checkpoint_commit_failed"} <= (
        actions
    )


async def test_a_transactional_projector_outlives_a_restart_and_applies_each_event_once(
    throwaway_cluster: LocalCluster,
) -> None:
    url = message_store_on(throwaway_cluster)
    await write_transactions(url, accounts=20, events=200, seed=10)
    settings = settings_for(
        url,
        categories=("account",),
        until_caught_up=False,
        connect_timeout=2,
        outage_limit=60,
        retry_base=0.2,
    )

    def caught_up() -> bool:
        projected, folded = projected_and_folded(url)
        return projected == folded

    # Slow calls: some run, holding their connections' transactions, when the server goes.
    async with running(balances_projection(delay=0.02), settings) as ended:
        await eventually(lambda: bool(projected_and_folded(url)[0]), within=20)
        await anyio.to_thread.run_sync(throwaway_cluster.stop)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(throwaway_cluster.start)
        await write_transactions(url, accounts=20, events=100, seed=11)
        await eventually(caught_up, within=60)
        assert ended == []

    assert await held_streams(url, "balances") == []


class OwnConnectionWriter:
    """A handler that writes each event over a connection of its own to the same database,
    and opens a new one on its next call after an OperationalError (as users write them)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None

    def projection(self) -> Projection:
        projection = Projection("writer")

        @projection.handler
        async def handle(stream_name: str, events: list[Event]) -> None:
            try:
                if self._conn is None:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=2
                    )
                for event in events:
                    await self._conn.execute(
                        "INSERT INTO written VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (stream_name, event.position),
                    )
            except psycopg.OperationalError:
                self._conn = None
                raise

        return projection

    async def written(self) -> int:
        async with await psycopg.AsyncConnection.connect(self._url) as conn:
            row = await (await conn.execute("SELECT count(*) FROM written")).fetchone()
        assert row is not None
        return int(row[0])


async def test_streams_failing_through_a_database_restart_resume_at_once_and_none_is_parked(
    throwaway_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # Failures counted as attempts would park every stream (two attempts allowed), or leave
    # them waiting out retry delays of up to a minute after the restart.
    caplog.set_level(logging.INFO, logger="projector")
    url = message_store_on(throwaway_cluster)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE written (stream text, position bigint, PRIMARY KEY (stream, position))"
        )
    before = {f"account-{i}": 10 for i in range(300)}
    after = {f"account-{i}": 10 for i in range(300, 600)}
    writer = OwnConnectionWriter(url)
    settings = settings_for(
        url,
        categories=("account",),
        group="writer",
        until_caught_up=False,
        tail_sleep=0.1,
        connect_timeout=2,
        outage_limit=60,
        retry_base=120,
        retry_cap=300,
        retry_max_attempts=2,
    )
    async with running(writer.projection(), settings) as ended:
        await write_events(url, before)
        await eventually(lambda: _some(writer.written), within=20)
        await anyio.to_thread.run_sync(throwaway_cluster.stop)
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(throwaway_cluster.start)
        await write_events(url, after)
        # Well short of the first retry delay (120 s), with room for a loaded machine.
        await eventually(lambda: _all(writer.written, 6000), within=60)
        assert ended == []

    assert await held_streams(url, "writer") == []
    actions = [getattr(record, "action", None) for record in caplog.records]
    assert "outage_started" in actions
    assert "outage_ended" in actions
    assert "stream_parked" not in actions


async def _some(count: Callable[[], Awaitable[int]]) -> bool:
    return await count() > 0


async def _all(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await count() == expected


async def test_a_hot_standby_rides_out_a_restart_and_its_terminated_session_then_takes_over(
    throwaway_cluster: LocalCluster,
) -> None:
    url = message_store_on(throwaway_cluster)
    await write_events(url, {f"account-{i}": 2 for i in range(20)})
    recorder = Recorder()
    settings = settings_for(
        url, categories=("account",), until_caught_up=False, connect_timeout=2, outage_limit=60
    )
    ended: dict[str, str] = {}

    async def run(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                await run_projection(recorder.projection(), settings)
                ended[name] = "returned"
            except Exception as exc:
                ended[name] = repr(exc)

    first = anyio.CancelScope()
    with anyio.fail_after(90):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, "first", first)
            await eventually(lambda: recorder.handled == 40, within=20)
            tasks.start_soon(run, "second", anyio.CancelScope())
            await eventually(lambda: _member_sessions(url, 2), within=20)

            await anyio.to_thread.run_sync(throwaway_cluster.stop)
            await anyio.sleep(1)
            await anyio.to_thread.run_sync(throwaway_cluster.start)
            await eventually(lambda: _member_sessions(url, 2), within=30)
            await _terminate_standby_session(url)
            await eventually(lambda: _member_sessions(url, 2), within=30)
            assert ended == {}

            # One of them stops (whichever holds the member now): the other projects on.
            first.cancel()
            await write_events(url, {f"account-{i}": 2 for i in range(20, 30)})
            everything = await stored_events(url)
            await eventually(lambda: recorder.delivered() == everything, within=30)
            assert ended == {}
            tasks.cancel_scope.cancel()


async def _member_sessions(url: str, count: int) -> bool:
    """Whether ``count`` runners of the recorder's member have a lock session open."""
    conn = await connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name LIKE 'projector recorder %'"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] == count


async def _terminate_standby_session(url: str) -> None:
    conn = await connect(url)
    async with conn:
        ids = member_locks.lock_ids("recorder", 0)
        holder = await (await conn.execute(member_locks.HOLDER, ids)).fetchone()
        assert holder is not None
        cursor = await conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name LIKE 'projector recorder %%' AND pid <> %s",
            (holder[2],),
        )
        assert await cursor.fetchall() == [(True,)]


async def test_a_database_away_for_longer_than_the_outage_limit_stops_the_run(
    throwaway_cluster: LocalCluster,
) -> None:
    url = message_store_on(throwaway_cluster)
    await write_events(url, {f"account-{i}": 1 for i in range(10)})
    recorder = Recorder()
    settings = settings_for(
        url, categories=("account",), until_caught_up=False, connect_timeout=1, outage_limit=1
    )

    with pytest.RaisesGroup(
        pytest.RaisesExc(DatabaseUnavailableError, match=r"more than 1 s .*\(outage_limit\)"),
        flatten_subgroups=True,
    ):
        async with running(recorder.projection(), settings):
            await eventually(lambda: recorder.handled == 10, within=20)
            await anyio.to_thread.run_sync(throwaway_cluster.stop)
            await anyio.sleep(30)
    assert recorder.handled == 10
