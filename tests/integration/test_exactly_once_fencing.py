"""Two runners of one transactional projection working on the same stream at once (a zombie that
lost its member, a successor started before its predecessor's last transaction ended), and
commits whose outcome the runner never learns: each event is still applied exactly once.

Each test drives `ExactlyOnce` (the span handler of a transactional runner) or `ExactlyOnceBatch`
(what runs a transactional batch handler) directly, so the interleaving that broke exactly-once
under faults happens every time, not by chance.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import psycopg
import pytest

from projector import Event, Projection, write_message
from projector.errors import DatabaseUnavailableError
from projector.localpg import LocalCluster
from projector.model.projection import Spans
from projector.runtime.exactly_once import ExactlyOnce
from projector.runtime.exactly_once_batch import ExactlyOnceBatch
from projector.storage.database import Connection, open_pool
from projector.storage.message_store import MessageStore
from projector.storage.migrate import install_message_store, upgrade
from tests.support.balances import ADD, CREATE
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

STREAM = "account-1"
OTHER = "account-2"


@asynccontextmanager
async def runner(url: str, projection: Projection) -> AsyncIterator[ExactlyOnce]:
    """One runner's transactional span handler, with a pool of its own."""
    async with (
        open_pool(url, max_size=4) as pool,
        ExactlyOnce(projection, pool, "g") as handler,
    ):
        yield handler


@asynccontextmanager
async def batch_runner(url: str, projection: Projection) -> AsyncIterator[ExactlyOnceBatch]:
    """One runner's transactional batch handler, with a pool of its own."""
    async with (
        open_pool(url, max_size=4) as pool,
        ExactlyOnceBatch(projection, pool, "g") as handler,
    ):
        yield handler


async def deposit(url: str, *amounts: int, stream: str = STREAM) -> list[Event]:
    """Append deposits to ``stream``; return all of its events."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        await conn.execute(CREATE)
        for amount in amounts:
            await write_message(conn, stream, "Deposited", {"amount": amount})
        await conn.commit()
    async with open_pool(url, max_size=1) as pool:
        return await MessageStore(pool).read_stream(stream, 0, 100)


def balance(url: str, stream: str = STREAM) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT balance FROM balances WHERE account = %s", (stream,)).fetchone()
    return None if row is None else int(row[0])


def adding(*, paused: anyio.Event | None = None, wrote: anyio.Event | None = None) -> Projection:
    """Adds each event's amount (not idempotent on its own, so a double application shows);
    after its write, sets ``wrote`` and waits for ``paused`` to be set."""
    projection = Projection("adding")

    @projection.transactional
    async def add(stream_name: str, events: list[Event], conn: Connection) -> None:
        delta = sum(int(event.data["amount"]) for event in events)
        await conn.execute(ADD, {"account": stream_name, "delta": delta})
        if wrote is not None:
            wrote.set()
        if paused is not None:
            await paused.wait()

    return projection


def adding_in_batches(
    *, paused: anyio.Event | None = None, wrote: anyio.Event | None = None
) -> Projection:
    """`adding` as a transactional batch handler: one write per stream, in name order."""
    projection = Projection("adding")

    @projection.transactional_batch
    async def add(spans: Spans, conn: Connection) -> None:
        for name, events in sorted(spans.items()):
            delta = sum(int(event.data["amount"]) for event in events)
            await conn.execute(ADD, {"account": name, "delta": delta})
        if wrote is not None:
            wrote.set()
        if paused is not None:
            await paused.wait()

    return projection


async def test_a_zombie_never_applies_what_its_successor_applied(own_store_url: str) -> None:
    events = await deposit(own_store_url, 1, 10)
    async with runner(own_store_url, adding()) as zombie:
        assert await zombie.handle(STREAM, events[:1]) == 1
        # The zombie loses its member; its successor reads the stream's position and goes on.
        async with runner(own_store_url, adding()) as successor:
            assert await successor.handle(STREAM, events) == 2
        # The zombie wakes up and is given the event its successor applied.
        assert await zombie.handle(STREAM, events[1:]) == 2

    assert balance(own_store_url) == 11


async def test_a_runner_started_beside_an_unfinished_transaction_never_applies_its_events_again(
    own_store_url: str,
) -> None:
    # What a SIGKILL followed at once by a new runner does: the killed runner's last
    # transaction is still open on the server, its write made, its position not yet recorded.
    events = await deposit(own_store_url, 5)
    release, wrote = anyio.Event(), anyio.Event()
    async with (
        runner(own_store_url, adding(paused=release, wrote=wrote)) as first,
        runner(own_store_url, adding()) as second,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(first.handle, STREAM, events)
        await wrote.wait()
        results: list[int] = []

        async def second_call() -> None:
            results.append(await second.handle(STREAM, events))

        tasks.start_soon(second_call)
        await eventually(lambda: _waits_for_a_lock(own_store_url), within=10)
        release.set()

    assert results == [1]
    assert balance(own_store_url) == 5


async def _waits_for_a_lock(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] > 0


@pytest.fixture
def store_cluster(throwaway_cluster: LocalCluster) -> str:
    """A server of the test's own (its settings are changed) with a store and projector's
    tables in its ``postgres`` database."""
    install_message_store(throwaway_cluster.url)
    upgrade(throwaway_cluster.url)
    return throwaway_cluster.url


def _set_system(url: str, setting: str, value: str | None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if value is None:
            conn.execute(f"ALTER SYSTEM RESET {setting}")
        else:
            conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
    # The reload is asynchronous: the postmaster reads the file, then signals the sessions. A
    # new session shows the postmaster's value, so once it shows the new one every session has
    # been signalled (and applies it before its next statement).
    expected = value or ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(f"SHOW {setting}").fetchone()
        if row is not None and row[0] == expected:
            return
        time.sleep(0.02)
    raise AssertionError(f"{setting} did not become {expected!r} within 30 s of the reload")


@pytest.mark.parametrize("cut", ["handler_timeout", "terminated_session"])
async def test_a_commit_whose_outcome_was_lost_is_not_applied_again(
    store_cluster: str, cut: str
) -> None:
    # A synchronous standby that never answers keeps every COMMIT waiting after the
    # transaction has committed locally: cutting the wait short (a cancelled call, or the
    # session terminated) commits it, and the client is never told. (The test cluster turns
    # synchronous_commit off; these sessions turn it back on.)
    url = store_cluster + "?options=-c%20synchronous_commit%3Don"
    events = await deposit(url, 3, 7)
    async with runner(url, adding()) as handler:
        assert await handler.handle(STREAM, events[:1]) == 1
        _set_system(url, "synchronous_standby_names", "nobody")
        await _cut_while_committing(url, cut, partial(handler.handle, STREAM, events[1:]))
        assert balance(url) == 10  # committed, though the call never returned

        assert await handler.handle(STREAM, events[1:]) == 2

    assert balance(url) == 10


async def _cut_while_committing(
    url: str, cut: str, call: Callable[[], Coroutine[Any, Any, object]]
) -> None:
    """Run ``call`` while no synchronous standby answers, and cut it short once its COMMIT
    waits for one (committed locally, never acknowledged): cancelled, as handler_timeout
    cancels a call, or its session terminated. Cutting only then, not after a fixed time: on a
    slow machine an earlier cut comes before the commit and proves nothing."""
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call)
            if cut == "terminated_session":
                await eventually(lambda: _waiting_commits(url, end=True), within=10)
            else:
                await eventually(lambda: _waiting_commits(url), within=10)
                tasks.cancel_scope.cancel()
    except* DatabaseUnavailableError:
        pass  # the terminated session's call fails: the runner retries it
    finally:
        _set_system(url, "synchronous_standby_names", None)


async def _waiting_commits(url: str, *, end: bool = False) -> bool:
    """Whether a COMMIT waits for the synchronous standby (terminating its session if
    ``end``)."""
    counted = "pg_terminate_backend(pid)" if end else "pid"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            f"SELECT count({counted}) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
        )
        row = await cursor.fetchone()
    return row is not None and row[0] > 0


# -- the same interleavings for a transactional batch ------------------------------------------


async def every(handler: ExactlyOnceBatch, spans: dict[str, list[Event]]) -> dict[str, int]:
    """Each stream's next position after a batch call (a stream the call leaves out of its
    outcomes handled all of its span)."""
    outcomes = await handler.run(spans)
    return {name: outcomes.get(name, events[-1].position + 1) for name, events in spans.items()}


async def test_a_zombie_batch_never_applies_what_its_successor_applied(own_store_url: str) -> None:
    moved = await deposit(own_store_url, 1, 10)
    kept = await deposit(own_store_url, 2, 20, stream=OTHER)
    async with batch_runner(own_store_url, adding_in_batches()) as zombie:
        assert await every(zombie, {STREAM: moved[:1], OTHER: kept[:1]}) == {STREAM: 1, OTHER: 1}
        # The zombie loses its member; its successor applies one of the two streams.
        async with batch_runner(own_store_url, adding_in_batches()) as successor:
            assert await every(successor, {STREAM: moved}) == {STREAM: 2}
        # The zombie wakes up with both streams' next events, one of them applied already:
        # its batch fails as a whole, and is made again from the rows.
        assert await every(zombie, {STREAM: moved[1:], OTHER: kept[1:]}) == {STREAM: 2, OTHER: 2}

    assert (balance(own_store_url), balance(own_store_url, OTHER)) == (11, 22)


async def test_a_batch_beside_an_unfinished_batch_never_applies_its_events_again(
    own_store_url: str,
) -> None:
    spans = {
        STREAM: await deposit(own_store_url, 5),
        OTHER: await deposit(own_store_url, 6, stream=OTHER),
    }
    release, wrote = anyio.Event(), anyio.Event()
    async with (
        batch_runner(own_store_url, adding_in_batches(paused=release, wrote=wrote)) as first,
        batch_runner(own_store_url, adding_in_batches()) as second,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(first.run, spans)
        await wrote.wait()
        results: list[dict[str, int]] = []

        async def second_call() -> None:
            results.append(await every(second, spans))

        tasks.start_soon(second_call)
        await eventually(lambda: _waits_for_a_lock(own_store_url), within=10)
        release.set()

    assert results == [{STREAM: 1, OTHER: 1}]
    assert (balance(own_store_url), balance(own_store_url, OTHER)) == (5, 6)


@pytest.mark.parametrize("cut", ["handler_timeout", "terminated_session"])
async def test_a_batch_commit_whose_outcome_was_lost_is_not_applied_again(
    store_cluster: str, cut: str
) -> None:
    # As in test_a_commit_whose_outcome_was_lost_is_not_applied_again, for a batch.
    url = store_cluster + "?options=-c%20synchronous_commit%3Don"
    events = {STREAM: await deposit(url, 3, 7), OTHER: await deposit(url, 4, 8, stream=OTHER)}
    first = {name: span[:1] for name, span in events.items()}
    rest = {name: span[1:] for name, span in events.items()}
    async with batch_runner(url, adding_in_batches()) as handler:
        assert await every(handler, first) == {STREAM: 1, OTHER: 1}
        _set_system(url, "synchronous_standby_names", "nobody")
        await _cut_while_committing(url, cut, partial(handler.run, rest))
        assert (balance(url), balance(url, OTHER)) == (10, 12)  # committed, never acknowledged

        assert await every(handler, rest) == {STREAM: 2, OTHER: 2}

    assert (balance(url), balance(url, OTHER)) == (10, 12)
