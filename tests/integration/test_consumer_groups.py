"""Consumer groups in-process on real Postgres: members split a category's streams between them,
each with checkpoints of its own, and a group changes size without losing an event."""

from __future__ import annotations

import logging
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TypeVar

import anyio
import psycopg
import pytest

from projector.admin import groups
from projector.errors import (
    ConfigurationError,
    GroupSizeMismatchError,
    MemberBusyError,
    ProjectorError,
)
from projector.model.events import Event, consumer_group_member
from projector.model.share import Share
from projector.settings import Settings
from projector.storage import database, member_locks
from projector.storage.checkpoints import COMMIT
from projector.storage.message_store import MessageStore
from tests.support.groups import (
    CATEGORY,
    category_head,
    group_checkpoints,
    run_members,
)
from tests.support.projecting import (
    Recorder,
    checkpoint,
    run_projection,
    settings_for,
    write_events,
)
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

GROUP = "recorder"  # the Recorder projection's name, hence its default group

T = TypeVar("T")


@asynccontextmanager
async def _connection(url: str) -> AsyncIterator[database.Connection]:
    conn = await database.connect(url)
    async with conn:
        yield conn


def _streams(first: int, count: int, *, events: int = 3) -> dict[str, int]:
    return {f"{CATEGORY}-{i}": 1 + i % events for i in range(first, first + count)}


def _handled(*recorders: Recorder) -> list[tuple[str, int]]:
    return sorted(
        (stream, position)
        for recorder in recorders
        for stream, positions in recorder.positions.items()
        for position in positions
    )


def _written(streams: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(
        (stream, position) for stream, count in streams.items() for position in range(count)
    )


async def _until_total_handled(recorders: dict[int, Recorder], count: int) -> None:
    async def done() -> bool:
        return sum(recorder.handled for recorder in recorders.values()) >= count

    await eventually(done)


async def _until_checkpoints_reach(url: str, names: list[str], position: int) -> None:
    async def reached() -> bool:
        return [await checkpoint(url, name, CATEGORY) for name in names] == [position] * len(names)

    await eventually(reached)


async def test_three_members_handle_every_event_once_each_stream_on_its_own_member(
    database_url: str,
) -> None:
    streams = _streams(0, 3000)
    recorders = {member: Recorder() for member in range(3)}
    names = [f"{GROUP}-{member}" for member in range(3)]

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                partial(
                    run_members,
                    database_url,
                    recorders,
                    size=3,
                    until_caught_up=False,
                    batch_size=200,
                    max_concurrent_streams=8,
                )
            )
            await write_events(database_url, streams, writers=4)
            await _until_total_handled(recorders, sum(streams.values()))
            await _until_checkpoints_reach(
                database_url, names, await category_head(database_url) + 1
            )
            tasks.cancel_scope.cancel()

    assert _handled(*recorders.values()) == _written(streams)
    for member, recorder in recorders.items():
        assert recorder.overlaps == []
        assert {consumer_group_member(stream, 3) for stream in recorder.positions} == {member}
        assert all(
            positions == list(range(streams[stream]))
            for stream, positions in recorder.positions.items()
        )
    rows = await group_checkpoints(database_url, GROUP)
    assert [(row.name, row.member, row.size, row.category) for row in rows] == [
        (name, member, 3, CATEGORY) for member, name in enumerate(names)
    ]


async def test_rebalancing_from_three_to_two_members_loses_no_event(database_url: str) -> None:
    before = _streams(0, 600)
    await write_events(database_url, before)
    first = {0: Recorder(), 1: Recorder()}
    await run_members(database_url, first, size=3)
    lagging = Recorder(delay=0.002)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                partial(
                    run_members,
                    database_url,
                    {2: lagging},
                    size=3,
                    until_caught_up=False,
                    batch_size=20,
                    max_concurrent_streams=2,
                )
            )
            await lagging.wait_until_handled(50)
            tasks.cancel_scope.cancel()
    old = {row.member: row.position for row in await group_checkpoints(database_url, GROUP)}
    after = _streams(600, 300)
    await write_events(database_url, after)

    async with _connection(database_url) as conn:
        plan = await groups.rebalance(conn, GROUP, 2, dry_run=False)
    second = {0: Recorder(), 1: Recorder()}
    await run_members(database_url, second, size=2)

    assert old[2] < min(old[0], old[1]), "member 2 was meant to lag behind"
    assert plan.positions == {CATEGORY: old[2]}
    handled = set(_handled(lagging, *first.values(), *second.values()))
    assert handled == set(_written(before | after))
    for member, recorder in second.items():
        assert {consumer_group_member(stream, 2) for stream in recorder.positions} == {member}
    head = await category_head(database_url)
    rows = await group_checkpoints(database_url, GROUP)
    assert [(row.member, row.size, row.category, row.position) for row in rows] == [
        (0, 2, CATEGORY, head + 1),
        (1, 2, CATEGORY, head + 1),
    ]


async def test_a_member_started_with_another_group_size_is_refused_and_handles_nothing(
    own_store_url: str,
) -> None:
    await write_events(own_store_url, _streams(0, 30))
    await run_members(own_store_url, {0: Recorder()}, size=3)
    rows = await group_checkpoints(own_store_url, GROUP)

    refused = Recorder()
    settings = settings_for(
        own_store_url, categories=(CATEGORY,), member=0, group_size=2
    )
    with pytest.raises(GroupSizeMismatchError) as raised:
        await run_projection(refused.projection(), settings)

    assert isinstance(raised.value, ConfigurationError), "a mismatch exits 2, as bad input does"
    assert "`projector rebalance --group recorder --group-size 2`" in str(raised.value)
    assert refused.handled == 0
    assert await group_checkpoints(own_store_url, GROUP) == rows


async def test_a_member_of_another_size_is_refused_even_before_the_group_has_a_checkpoint(
    own_store_url: str,
) -> None:
    other = settings_for(
        own_store_url, categories=(CATEGORY,), member=1, group_size=2
    )

    with anyio.fail_after(30):
        refusal = await _while_running(
            own_store_url,
            0,
            3,
            partial(_refusal, partial(run_projection, Recorder().projection(), other)),
        )

    assert isinstance(refusal, GroupSizeMismatchError)


async def test_a_group_with_checkpoints_of_two_sizes_is_refused_naming_both_sizes(
    own_store_url: str,
) -> None:
    # What members of sizes 3 and 2 leave when they start together on a new group (see above).
    async with _connection(own_store_url) as conn, conn.transaction():
        for member, size in ((0, 3), (1, 2)):
            row = {"group": GROUP, "member": member, "size": size, "category": CATEGORY}
            await conn.execute(COMMIT, {**row, "position": 1})
    settings = settings_for(
        own_store_url, categories=(CATEGORY,), member=0, group_size=3
    )

    with pytest.raises(GroupSizeMismatchError) as raised:
        await run_projection(Recorder().projection(), settings)

    assert "size 2" in str(raised.value)


async def test_changing_checkpoints_is_refused_while_a_member_runs_and_a_dry_run_changes_nothing(
    own_store_url: str,
) -> None:
    await write_events(own_store_url, _streams(0, 30))

    async def change_everything() -> list[ProjectorError | None]:
        await eventually(partial(_has_checkpoints, own_store_url))
        async with _connection(own_store_url) as conn:
            return [
                await _refusal(partial(groups.rebalance, conn, GROUP, 3, dry_run=False)),
                await _refusal(partial(groups.set_checkpoint, conn, GROUP, CATEGORY, 1, member=1)),
                await _refusal(partial(groups.reset_group, conn, GROUP)),
            ]

    with anyio.fail_after(30):
        refusals = await _while_running(own_store_url, 1, 2, change_everything)
    rows = await group_checkpoints(own_store_url, GROUP)
    async with _connection(own_store_url) as conn:
        plan = await groups.rebalance(conn, GROUP, 3, dry_run=True)

    assert all(isinstance(refusal, MemberBusyError) for refusal in refusals), refusals
    assert all(f"member 1 (projector {GROUP}-1 " in str(refusal) for refusal in refusals)
    assert [(row.member, row.size) for row in rows] == [(1, 2)]
    # Member 0 never ran, so it handled nothing: the plan restarts from the beginning.
    assert (plan.old_size, plan.new_size, plan.positions) == (2, 3, {CATEGORY: 1})
    assert "member(s) 0 had no checkpoint" in plan.notes[0]
    assert await group_checkpoints(own_store_url, GROUP) == rows


async def _while_running(
    url: str, member: int, size: int, attempt: Callable[[], Awaitable[T]]
) -> T:
    """What ``attempt()`` returns when awaited while ``member`` of ``size`` runs (and holds its
    lock); the member is stopped afterwards."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(
            partial(run_members, url, {member: Recorder()}, size=size, until_caught_up=False)
        )
        await eventually(partial(_holds_member, url, member))
        result = await attempt()
        tasks.cancel_scope.cancel()
    return result


async def _refusal(change: Callable[[], Awaitable[object]]) -> ProjectorError | None:
    """The error ``change()`` was refused with, or None when it went through. (Asserting outside
    the task group: pytest.raises failing inside one crashes this pytest at exit.)"""
    try:
        await change()
    except ProjectorError as exc:
        return exc
    return None


async def test_a_runner_that_lost_its_member_to_another_runner_commits_no_checkpoint(
    own_store_url: str,
) -> None:
    streams = _streams(0, 20)
    await write_events(own_store_url, streams)
    lost = Recorder()
    settings = settings_for(
        own_store_url,
        categories=(CATEGORY,),
        until_caught_up=False,
        standby=False,
        checkpoint_interval=3600,  # only the stop itself would commit
    )

    async with _connection(own_store_url) as other:
        with anyio.fail_after(30), pytest.raises(BaseExceptionGroup) as raised:
            await _run_until_taken_over(lost, settings, other, handled=sum(streams.values()))
        # ``other`` still holds the member: the runner stopped (starting over, it found the
        # member taken), and must not have committed past the start position it wrote when it
        # began (the beginning of the category).
        assert raised.group_contains(MemberBusyError, depth=None)
        assert await checkpoint(own_store_url, GROUP, CATEGORY) == 1


async def test_a_runner_that_lost_its_member_waits_as_its_standby_and_takes_it_back_when_free(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")

    def logged(action: str) -> int:
        return sum(getattr(record, "action", None) == action for record in caplog.records)

    streams = _streams(0, 20)
    await write_events(own_store_url, streams)
    recorder = Recorder()
    settings = settings_for(
        own_store_url, categories=(CATEGORY,), until_caught_up=False, checkpoint_interval=3600
    )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await recorder.wait_until_handled(sum(streams.values()))
            async with _connection(own_store_url) as other:
                await _take_over_member(other, GROUP, 0)
                # Taken over: it commits nothing, and waits as the member's standby.
                await eventually(partial(_async, lambda: logged("standby_waiting") == 1))
                assert logged("member_lock_lost") == 1
                assert await checkpoint(own_store_url, GROUP, CATEGORY) == 1
            # The other runner is gone: it takes the member back and projects new events.
            more = _streams(20, 5)
            await write_events(own_store_url, more)
            await recorder.wait_until_handled(sum(streams.values()) + sum(more.values()))
            assert logged("member_acquired") == 2
            tasks.cancel_scope.cancel()


async def _async(condition: Callable[[], bool]) -> bool:
    return condition()


async def _run_until_taken_over(
    recorder: Recorder, settings: Settings, other: database.Connection, *, handled: int
) -> None:
    """Run a member; once it has handled ``handled`` events, take its lock over on ``other``."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, recorder.projection(), settings)
        await recorder.wait_until_handled(handled)
        await _take_over_member(other, GROUP, 0)


async def _take_over_member(conn: database.Connection, group: str, member: int) -> None:
    """End the session holding a member's lock and take the lock on ``conn``, as a standby
    would, before the runner can take it back."""
    ids = member_locks.lock_ids(group, member)
    holder = await (await conn.execute(member_locks.HOLDER, ids)).fetchone()
    assert holder is not None, f"nobody holds {group} member {member}"
    # With a timeout, pg_terminate_backend returns once the session (and its lock) is gone.
    await conn.execute("SELECT pg_terminate_backend(%s, 5000)", (holder[2],))
    key = {"key": member_locks.lock_key(group, member)}
    taken = await (await conn.execute(member_locks.TRY_LOCK, key)).fetchone()
    assert taken == (True,)


async def _holds_member(url: str, member: int) -> bool:
    async with _connection(url) as conn:
        return await member_locks.is_held(conn, GROUP, member)


async def _has_checkpoints(url: str) -> bool:
    return bool(await group_checkpoints(url, GROUP))


def _stream_names(count: int) -> list[str]:
    """Stream names of every shape the partition rules tell apart, in category ``account``."""
    rng = random.Random(5)
    names = [
        CATEGORY,
        *(f"{CATEGORY}-{id_}" for id_ in ("", "+x", "1-2", "1-2+3", "café", "日本+1")),
    ]
    for i in range(count):
        cardinal = rng.randrange(count // 4)
        shape = i % 4
        if shape == 0:
            names.append(f"{CATEGORY}-{i}")
        elif shape == 1:
            names.append(f"{CATEGORY}-{cardinal}+{rng.choice(string.ascii_lowercase)}")
        elif shape == 2:
            names.append(f"{CATEGORY}-{cardinal}-{i}")
        else:
            names.append(f"{CATEGORY}-{cardinal}+{i}-{rng.choice(string.ascii_lowercase)}")
    return list(dict.fromkeys(names))


async def _member_read(store: MessageStore, batch_size: int) -> list[Event]:
    """Every event the member reads from the start, batch after batch until an empty one."""
    events: list[Event] = []
    position = 1
    while True:
        read = await store.read_category(CATEGORY, position, batch_size)
        found = await read.load()
        if not found:
            return events
        assert read.resume_at > position
        events.extend(found)
        position = read.resume_at


def _server_partition(url: str, member: int, size: int) -> list[int]:
    with psycopg.connect(url, options="-c search_path=message_store,public") as conn:
        rows = conn.execute(
            "SELECT global_position FROM get_category_messages(%s, 1, -1, NULL, %s, %s)",
            (CATEGORY, member, size),
        ).fetchall()
    return [row[0] for row in rows]


async def test_members_read_exactly_the_partitions_of_get_category_messages(
    database_url: str,
) -> None:
    # database_url runs this on Eventide's Message DB, whose get_category_messages is the
    # reference, and on projector's own store.
    names = _stream_names(3000)
    streams = {name: 1 + i % 2 for i, name in enumerate(names)}
    elsewhere = {f"{other}-{i}": 1 for other in ("account2", "account:x") for i in range(50)}
    await write_events(database_url, streams | elsewhere)

    async with database.open_pool(database_url, max_size=2) as pool:
        for size in (2, 3, 5):
            read = {}
            for member in range(size):
                events = await _member_read(MessageStore(pool, Share.member(member, size)), 97)
                positions = [event.global_position for event in events]
                assert positions == _server_partition(database_url, member, size), (member, size)
                read.update({e.global_position: (e.stream_name, member) for e in events})

            assert sorted(name for name, _ in read.values()) == sorted(
                name for name, count in streams.items() if name != CATEGORY for _ in range(count)
            )
            assert all(consumer_group_member(n, size) == m for n, m in read.values())
