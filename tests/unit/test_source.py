"""The source's polling loop with a scripted store and sink, no database: batches in global
order, the tail, wake-ups, a member's position moving past other members' rows, outages."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial

import anyio
import pytest

from projector.errors import DatabaseUnavailableError
from projector.model.events import Event, Read
from projector.pipeline.source import CategorySource

pytestmark = pytest.mark.anyio
TIMEOUT = 5.0


def events_at(*global_positions: int) -> list[Event]:
    t0, event_id = datetime(2024, 1, 1, tzinfo=UTC), "0b9c4a52-5d3e-4d8e-a0c4-7a1f2e3d4c5b"
    return [
        Event(g, 0, t0, f"invoice-{g}", "Issued", "{}", None, event_id) for g in global_positions
    ]


class Store:
    """Serves scripted reads in turn (a Read, or an exception to raise); then empty reads at
    the last position."""

    def __init__(self, *script: Read | Exception) -> None:
        self.script = list(script)
        self.reads: list[tuple[int, int]] = []  # (position, batch_size) asked for

    async def read_category(self, category: str, position: int, batch_size: int) -> Read:
        self.reads.append((position, batch_size))
        if not self.script:
            return Read([], position)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


class Sink:
    """Records what it is given: the events' global positions, and the position read up to."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[int], int]] = []

    async def submit(self, events: Sequence[Event], position: int) -> None:
        self.batches.append(([e.global_position for e in events], position))


def source(store: Store, sink: Sink, **overrides: object) -> CategorySource:
    options: dict[str, object] = {"position": 1, "batch_size": 2, "tail_sleep": 60.0}
    options.update(overrides)
    return CategorySource(store, sink, "invoice", **options)  # type: ignore[arg-type]


async def test_a_catch_up_reads_batch_after_batch_without_sleeping_and_stops_at_the_tail() -> None:
    store = Store(Read(events_at(1, 2), 3), Read(events_at(3), 4))
    sink = Sink()

    with anyio.fail_after(TIMEOUT):
        await source(store, sink).run(stop_at_tail=True)

    assert sink.batches == [([1, 2], 3), ([3], 4)]
    assert store.reads == [(1, 2), (3, 2), (4, 2)]  # a short read is followed at once


async def test_an_empty_read_that_went_past_other_members_rows_moves_the_position() -> None:
    store = Store(Read([], 500))
    sink = Sink()
    reader = source(store, sink)

    with anyio.fail_after(TIMEOUT):
        await reader.run(stop_at_tail=True)

    assert sink.batches == [([], 500)]
    assert reader.position == 500
    assert reader.reached_tail.is_set()


async def test_at_the_tail_it_sleeps_until_woken() -> None:
    store = Store()
    sink = Sink()
    reader = source(store, sink, tail_sleep=60.0)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(reader.run)
            await reader.reached_tail.wait()
            await anyio.wait_all_tasks_blocked()
            assert len(store.reads) == 1, "it read again without a wake-up"
            store.script.append(Read(events_at(1), 2))
            reader.wake()
            await anyio.wait_all_tasks_blocked()
            tasks.cancel_scope.cancel()

    assert sink.batches == [([1], 2)]


async def test_a_read_that_fails_for_want_of_the_database_is_tried_again_from_there() -> None:
    store = Store(DatabaseUnavailableError("connection refused"), Read(events_at(1), 2))
    sink = Sink()

    with anyio.fail_after(TIMEOUT):
        await source(store, sink, outage_limit=30).run(stop_at_tail=True)

    assert [position for position, _ in store.reads[:2]] == [1, 1]
    assert sink.batches == [([1], 2)]


async def test_an_outage_past_the_limit_ends_the_source() -> None:
    store = Store(*(DatabaseUnavailableError("connection refused") for _ in range(100)))

    with anyio.fail_after(TIMEOUT), pytest.raises(DatabaseUnavailableError, match="outage_limit"):
        await source(store, Sink(), outage_limit=0.01).run(stop_at_tail=True)


class BlockingSink(Sink):
    """A sink whose ``submit`` waits until released: a read-ahead limit that is full."""

    def __init__(self) -> None:
        super().__init__()
        self.release = anyio.Event()

    async def submit(self, events: Sequence[Event], position: int) -> None:
        await self.release.wait()
        await super().submit(events, position)


async def test_the_next_read_is_on_its_way_while_the_sink_takes_the_last_batch() -> None:
    store = Store(Read(events_at(1, 2), 3), Read(events_at(3, 4), 5))
    sink = BlockingSink()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(partial(source(store, sink).run, stop_at_tail=True))
            await anyio.wait_all_tasks_blocked()
            # The first batch waits for the sink, and the server already has the next read;
            # but only one: what is read waits in memory for the sink, not batch after batch.
            assert store.reads == [(1, 2), (3, 2)]
            assert sink.batches == []
            sink.release.set()

    assert sink.batches == [([1, 2], 3), ([3, 4], 5)]
    assert store.reads == [(1, 2), (3, 2), (5, 2)]


async def test_a_read_ahead_that_fails_ends_the_source_with_its_own_error_once_reached() -> None:
    store = Store(Read(events_at(1, 2), 3), ValueError("malformed row"))
    sink = Sink()

    with anyio.fail_after(TIMEOUT), pytest.raises(ValueError, match="malformed row"):
        await source(store, sink).run(stop_at_tail=True)

    assert sink.batches == [([1, 2], 3)]  # what was read before it went to the sink
