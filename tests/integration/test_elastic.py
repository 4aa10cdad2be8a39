"""Elastic groups in-process against real Postgres: one member projects every bucket; two split
them; members joining and leaving hand buckets over with nothing delivered twice."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from projector import Event, Projection
from projector.errors import ConfigurationError, LeaseLostError
from projector.localpg import free_port
from projector.model.events import consumer_group_member
from projector.model.share import Share
from projector.runtime.elastic import ElasticMember
from projector.storage import buckets, checkpoints, database, member_index
from projector.storage.message_store import MessageStore, read_buckets
from tests.support.groups import CATEGORY, category_head
from tests.support.projecting import (
    Recorder,
    run_projection,
    settings_for,
    stored_events,
    write_events,
)
from tests.support.scraping import scrape
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

BUCKETS = 8
GROUP = "elastic"


def elastic_settings(url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "categories": (CATEGORY,),
        "group": GROUP,
        "elastic": True,
        "buckets": BUCKETS,
        "heartbeat": 0.1,
        "bucket_lease": 1.0,
        "until_caught_up": False,
        "summary_interval": 0,
    }
    values.update(overrides)
    return settings_for(url, **values)


def streams(start: int, count: int = 40, events: int = 5) -> dict[str, int]:
    return {f"{CATEGORY}-{index}": events for index in range(start, start + count)}


def recorder() -> Recorder:
    """Records every call of every member it runs in; its calls take a moment (a real handler
    waits), so two members in one stream at once would overlap."""
    return Recorder(name=GROUP, delay=0.001)


async def owners(url: str) -> dict[str | None, int]:
    conn = await database.connect(url)
    async with conn:
        found: Counter[str | None] = Counter(
            lease.owner for lease in await buckets.leases(conn, GROUP) if not lease.free
        )
    return dict(found)


async def test_one_member_projects_every_bucket_and_checkpoints_each(own_store_url: str) -> None:
    url = own_store_url
    await write_events(url, streams(0))
    recorder = Recorder(name=GROUP)
    await run_projection(recorder.projection(), elastic_settings(url, until_caught_up=True))
    assert recorder.delivered() == await stored_events(url)
    assert recorder.redelivered() == []
    conn = await database.connect(url)
    async with conn:
        rows = await checkpoints.rows(conn, GROUP)
        leases = await buckets.leases(conn, GROUP)
    head = await category_head(url)
    assert sorted((row.member, row.size) for row in rows) == [(b, BUCKETS) for b in range(BUCKETS)]
    assert {row.position for row in rows} == {head + 1}
    assert all(lease.free for lease in leases), "a member that left keeps no bucket"


async def test_a_bucket_starts_at_its_own_checkpoint_and_nothing_below_it_is_delivered(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, streams(0))
    await run_projection(
        Recorder(name=GROUP).projection(), elastic_settings(url, until_caught_up=True)
    )
    await write_events(url, streams(100, count=40, events=2))
    # Bucket 0 goes back to the beginning; the others stay at the head.
    conn = await database.connect(url)
    async with conn:
        await checkpoints.write(conn, GROUP, 0, BUCKETS, CATEGORY, 1)
    again = Recorder(name=GROUP)
    await run_projection(again.projection(), elastic_settings(url, until_caught_up=True))
    delivered = {name for name, _ in again.calls}
    bucket_0 = {name for name in streams(0) if consumer_group_member(name, BUCKETS) == 0}
    assert delivered == bucket_0 | set(streams(100, count=40))


async def test_two_members_split_the_buckets_and_a_graceful_leave_redelivers_nothing(
    own_store_url: str,
) -> None:
    url = own_store_url
    deliveries = recorder()
    await write_events(url, streams(0))
    async with anyio.create_task_group() as tasks:
        first = anyio.CancelScope()
        second = anyio.CancelScope()
        tasks.start_soon(_run_in, first, deliveries.projection(), elastic_settings(url))
        await eventually(_all_handled(deliveries, url))
        tasks.start_soon(_run_in, second, deliveries.projection(), elastic_settings(url))
        await eventually(lambda: _split_between(url, 2))
        await write_events(url, streams(100))
        await eventually(_all_handled(deliveries, url))
        second.cancel()  # a graceful leave: the other member takes its buckets back
        await eventually(lambda: _split_between(url, 1))
        await write_events(url, streams(200))
        await eventually(_all_handled(deliveries, url))
        first.cancel()
    assert deliveries.delivered() == await stored_events(url)
    assert deliveries.redelivered() == []
    assert deliveries.overlaps == []


async def _run_in(scope: anyio.CancelScope, projection: Projection, settings: Any) -> None:
    with scope:
        await run_projection(projection, settings)


def _all_handled(deliveries: Recorder, url: str) -> Callable[[], Any]:
    async def check() -> bool:
        return deliveries.delivered() == await stored_events(url)

    return check


async def _split_between(url: str, members: int) -> bool:
    found = await owners(url)
    shares = sorted(found.values())
    return len(found) == members and sum(shares) == BUCKETS and shares[-1] - shares[0] <= 1


def test_elastic_refuses_a_member_number() -> None:
    with pytest.raises(ConfigurationError, match="drop --member"):
        elastic_settings("postgresql://x/y", member=1, group_size=2)


def test_buckets_needs_elastic() -> None:
    with pytest.raises(ConfigurationError, match="add --elastic"):
        settings_for("postgresql://x/y", buckets=8)


async def _read_all(store: MessageStore, position: int = 1) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    while True:
        read = await store.read_category(CATEGORY, position, 7)
        found.extend((event.stream_name, event.global_position) for event in await read.load())
        if read.resume_at == position:
            return found
        position = read.resume_at


async def test_a_bucket_read_gives_each_owned_bucket_from_its_start_with_or_without_the_index(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, streams(0, count=60, events=3))
    owned = {1: 1, 2: 40, 5: 90}  # not contiguous: buckets 3 and 4 are someone else's
    conn = await database.connect(url)
    async with conn:
        rows = await (
            await conn.execute(
                "SELECT stream_name, global_position FROM message_store.messages"
                " ORDER BY global_position"
            )
        ).fetchall()
    expected = [
        (name, position)
        for name, position in rows
        if (bucket := consumer_group_member(name, BUCKETS)) in owned and position >= owned[bucket]
    ]
    async with database.open_pool(url, max_size=2) as pool:
        store = MessageStore(pool, Share.buckets(owned, BUCKETS), starts={CATEGORY: owned})
        without = await _read_all(store)
        member_index.install_bucket_index(url, BUCKETS)
        with_index = await _read_all(store)
        async with pool.connection() as conn:
            plan = await (
                await conn.execute(
                    "EXPLAIN " + read_buckets(BUCKETS),
                    {"category": CATEGORY, "position": 1, "batch_size": 7, "low": 1, "high": 5},
                )
            ).fetchall()
    assert without == expected
    assert with_index == expected
    assert member_index.bucket_index_name(BUCKETS) in "\n".join(row[0] for row in plan)


async def test_a_member_stopped_during_a_heartbeat_still_releases_its_buckets(
    own_store_url: str,
) -> None:
    """A stop landing while a heartbeat's query runs: the query finishes, so the member's
    connection is still there for the last commit and the leave. (Cancelling psycopg mid-query
    closed it: the buckets then waited out their lease, and their next owner was given again
    what had been handled since the last commit.)"""
    member = ElasticMember(own_store_url, GROUP, buckets=BUCKETS, heartbeat=0.05, lease=10.0)
    blocker = await database.connect(own_store_url)
    observer = await database.connect(own_store_url)
    await observer.set_autocommit(True)
    async with blocker, observer:
        async with member:
            assert len((await member.next_tenure()).owned) == BUCKETS
            # A heartbeat's first statement updates the member's row: it waits for this lock.
            await blocker.execute(
                "SELECT 1 FROM projector.elastic_members WHERE member_id = %s FOR UPDATE",
                (member.identity.member_id,),
            )
            beating = anyio.CancelScope()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_within, beating, member.heartbeats)
                await eventually(lambda: _waits_for_a_lock(observer, member.identity.member_id))
                beating.cancel()  # as a stopping runner does
                await anyio.wait_all_tasks_blocked()  # the heartbeat has taken the stop
                await blocker.commit()  # the heartbeat's query can finish now
            assert not member.connection.closed
        held = await (
            await observer.execute(
                "SELECT count(*) FROM projector.bucket_leases WHERE group_name = %s"
                " AND owner IS NOT NULL",
                (GROUP,),
            )
        ).fetchone()
    assert held == (0,), "the buckets are still held: they wait out their lease"


async def test_a_member_whose_heartbeats_stall_stops_before_its_buckets_can_be_taken(
    own_store_url: str,
) -> None:
    """A member that cannot renew its leases (here its heartbeat waits on a lock; in life a
    server restart or a partition) ends its tenure by its own clock while its leases still
    run: no other member can have taken a bucket yet, so no stream is handled by two
    processes at once. (It used to go on projecting until a heartbeat got through.)"""
    member = ElasticMember(own_store_url, GROUP, buckets=BUCKETS, heartbeat=0.5, lease=2.0)
    other = buckets.Identity(GROUP, "other", "host-other", 1)
    blocker = await database.connect(own_store_url)
    observer = await database.connect(own_store_url)
    await observer.set_autocommit(True)
    async with blocker, observer, member:
        tenure = await member.next_tenure()
        await blocker.execute(
            "SELECT 1 FROM projector.elastic_members WHERE member_id = %s FOR UPDATE",
            (member.identity.member_id,),
        )
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(member.heartbeats)
            with pytest.raises(LeaseLostError, match="lost buckets"):
                await tenure.until_lost()
            taken = await buckets.acquire(observer, other, range(BUCKETS), lease=2.0)
            await blocker.rollback()
            tasks.cancel_scope.cancel()
    assert taken == {}, "a bucket could be taken while its member still projected it"


async def test_a_member_that_loses_its_leases_cancels_its_running_calls_at_once(
    own_store_url: str,
) -> None:
    """Once its leases may have run out, a member's running calls are cancelled, not given
    ``shutdown_timeout`` to finish as a stop would: the buckets' next owner may already be
    handling the same streams. (They were let finish: a call waiting out the outage that cost
    the leases then ran beside the next owner's.)"""
    url = own_store_url
    await write_events(url, streams(0, count=1, events=1))
    called, cancelled = anyio.Event(), anyio.Event()
    stalled = Projection(GROUP)

    @stalled.handler
    async def wait(stream_name: str, events: list[Event]) -> None:
        called.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    settings = elastic_settings(url, heartbeat=0.2, bucket_lease=1.0, shutdown_timeout=60)
    blocker = await database.connect(url)
    async with blocker, anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, stalled, settings)
        await eventually(called.is_set, within=30)
        # Every heartbeat of the member now waits for this lock: its leases run out unrenewed.
        await blocker.execute(
            "SELECT 1 FROM projector.elastic_members WHERE group_name = %s FOR UPDATE", (GROUP,)
        )
        await eventually(cancelled.is_set, within=20)
        await blocker.rollback()
        tasks.cancel_scope.cancel()


async def _within(scope: anyio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()


# Sessions whose application name is LIKE the parameter, blocked on a lock.
_BLOCKED = "FROM pg_stat_activity WHERE application_name LIKE %s AND wait_event_type = 'Lock'"


async def _waits_for_a_lock(conn: database.Connection, member_id: str = "%") -> bool:
    """Whether exactly one session of ``member_id`` (any member's, by default) is blocked."""
    row = await (
        await conn.execute(f"SELECT count(*) {_BLOCKED}", (f"projector {member_id}",))
    ).fetchone()
    return row == (1,)


async def test_a_run_of_failed_heartbeats_is_one_warning_and_its_end_is_logged(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The member's session cut and the database refusing new ones for a while: a beat every
    50 ms fails again and again, but warns once; the beat that gets through says so."""
    caplog.set_level(logging.DEBUG, logger="projector.runtime.elastic")
    member = ElasticMember(own_store_url, GROUP, buckets=BUCKETS, heartbeat=0.05, lease=10.0)
    own = urlsplit(own_store_url)
    # A database cannot refuse connections while one of its own sessions asks.
    admin = await database.connect(urlunsplit(own._replace(path="/postgres")))
    await admin.set_autocommit(True)
    async with admin, member:
        refuse = f'ALTER DATABASE "{own.path.lstrip("/")}" ALLOW_CONNECTIONS '
        await member.next_tenure()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(member.heartbeats)
            try:
                await admin.execute(refuse + "false")
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (f"projector {member.identity.member_id}",),
                )
                await eventually(lambda: len(_actions(caplog, "heartbeat_failed")) >= 3)
            finally:
                await admin.execute(refuse + "true")
            await eventually(lambda: _actions(caplog, "heartbeat_resumed") != [])
            tasks.cancel_scope.cancel()
    failed = _actions(caplog, "heartbeat_failed")
    assert [r.levelno for r in failed][:1] == [logging.WARNING]
    assert {r.levelno for r in failed[1:]} == {logging.DEBUG}
    (resumed,) = _actions(caplog, "heartbeat_resumed")
    assert resumed.failed == len(failed)  # type: ignore[attr-defined]


def _actions(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def test_a_handover_whose_last_commit_loses_the_database_goes_on_and_skips_nothing(
    own_store_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member draining for a rebalance has its session cut while its last commit waits: the
    run goes on (the buckets it gives up are taken from their previous checkpoints, delivered
    again), instead of ending with the lost connection. Found by the random fault suite."""
    url = own_store_url
    caplog.set_level(logging.INFO, logger="projector")
    deliveries = recorder()
    held, entered = anyio.Event(), anyio.Event()
    projection = deliveries.projection()
    handle = projection.handle

    async def holding(stream_name: str, events: list[Event]) -> int:
        if stream_name == f"{CATEGORY}-held":
            entered.set()
            await held.wait()  # keeps the first member draining until the lock is in place
        return await handle(stream_name, events)

    projection.handle = holding  # type: ignore[method-assign]
    last_commit = anyio.Event()
    commit_fenced = buckets.commit_fenced

    async def committing(*args: Any, **kwargs: Any) -> None:
        if held.is_set():  # the drained tenure's last commit
            last_commit.set()
        await commit_fenced(*args, **kwargs)

    monkeypatch.setattr(buckets, "commit_fenced", committing)
    await write_events(url, streams(0))
    locker = await database.connect(url)
    admin = await database.connect(url)
    await admin.set_autocommit(True)
    async with anyio.create_task_group() as tasks, locker, admin:
        first, second = anyio.CancelScope(), anyio.CancelScope()
        tasks.start_soon(_run_in, first, projection, elastic_settings(url))
        await eventually(_all_handled(deliveries, url))
        (member_id,) = await owners(url)
        await write_events(url, {f"{CATEGORY}-held": 1})
        await entered.wait()
        tasks.start_soon(_run_in, second, deliveries.projection(), elastic_settings(url))
        await eventually(lambda: _actions(caplog, "rebalance_started") != [])
        # The lease rows locked: the first member's last commit (and heartbeat) wait for them.
        await locker.execute(
            "SELECT 1 FROM projector.bucket_leases WHERE group_name = %s FOR UPDATE", (GROUP,)
        )
        held.set()
        assert member_id is not None
        await eventually(lambda: _waits_for_a_lock(admin, member_id))
        # The commit and the heartbeat share the member's session: one waits for the lock,
        # the other for the session.
        with anyio.fail_after(30):
            await last_commit.wait()
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"projector {member_id}",),
        )
        await locker.rollback()
        await eventually(lambda: _split_between(url, 2))
        await write_events(url, streams(100))
        await eventually(_all_handled(deliveries, url))
        second.cancel()
        first.cancel()
    assert len(_actions(caplog, "handover_commit_failed")) == 1
    assert deliveries.delivered() == await stored_events(url)
    assert deliveries.overlaps == []
    assert [r.levelno for r in _actions(caplog, "error")] == []


async def test_a_join_cut_short_by_the_database_is_tried_again(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The joining session terminated while it waits (a server restart, a pooler, an
    operator): the member joins again and projects, instead of exiting. Found by the random
    fault suite."""
    url = own_store_url
    caplog.set_level(logging.INFO, logger="projector")
    deliveries = recorder()
    await write_events(url, streams(0))
    locker = await database.connect(url)
    admin = await database.connect(url)
    await admin.set_autocommit(True)
    async with anyio.create_task_group() as tasks, locker, admin:
        # A member's first heartbeat writes its row: the join waits for this lock.
        await locker.execute("LOCK TABLE projector.elastic_members IN EXCLUSIVE MODE")
        member = anyio.CancelScope()
        tasks.start_soon(_run_in, member, deliveries.projection(), elastic_settings(url))
        await eventually(lambda: _waits_for_a_lock(admin))
        await admin.execute(f"SELECT pg_terminate_backend(pid) {_BLOCKED}", ("projector %",))
        await locker.rollback()
        await eventually(_all_handled(deliveries, url))
        member.cancel()
    assert [r.doing for r in _actions(caplog, "reconnecting")] == [f"joining {GROUP}"]  # type: ignore[attr-defined]


async def test_each_elastic_members_lag_counts_the_events_of_its_own_buckets_only(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, streams(0))
    total = len(await stored_events(url))
    never = anyio.Event()  # no call returns: every event stays in its member's lag
    waiting = Projection(GROUP)

    @waiting.handler
    async def wait(stream_name: str, events: list[Event]) -> None:
        await never.wait()

    members = [
        elastic_settings(url, metrics_port=free_port(), shutdown_timeout=0.1) for _ in range(2)
    ]
    lag = frozenset({("group", GROUP), ("category", CATEGORY)})
    owned = frozenset({("group", GROUP)})

    async def lags() -> list[float]:
        return [(await scrape(member))[("projector_lag_events", lag)] for member in members]

    async def split_and_measured() -> bool:
        if sorted((await owners(url)).values()) != [BUCKETS // 2, BUCKETS // 2]:
            return False
        samples = [await scrape(member) for member in members]
        return all(s.get(("projector_buckets_owned", owned)) == BUCKETS // 2 for s in samples)

    async with anyio.create_task_group() as tasks:
        for member in members:
            tasks.start_soon(run_projection, waiting, member)
        await eventually(split_and_measured, within=30, poll=0.2)
        # Each event is in one bucket, hence in one member's lag: the two add up to the store.
        await eventually(lambda: _sums_to(lags, total), within=30, poll=0.2)
        found = await lags()
        tasks.cancel_scope.cancel()

    assert all(0 < each < total for each in found), found


async def _sums_to(lags: Callable[[], Awaitable[list[float]]], total: int) -> bool:
    return sum(await lags()) == total
