"""A lane on its own, with a scripted schedule: read-ahead, and progress reported strictly in
submit order with the position each batch was read up to."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from projector.model.events import Event
from projector.pipeline.lane import Batch, Lane
from tests.support.sink import ev

pytestmark = pytest.mark.anyio


class Progress:
    def __init__(self) -> None:
        self.reported: list[tuple[str, int]] = []

    def advance(self, lane: str, position: int) -> None:
        self.reported.append((lane, position))


class Schedule:
    """Keeps every batch waiting on one stream, until the test completes it."""

    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def __call__(self, batch: Batch, events: Sequence[Event]) -> None:
        if events:
            batch.remaining = 1
            self.batches.append(batch)


async def test_batches_done_out_of_order_are_reported_in_submit_order() -> None:
    progress, schedule = Progress(), Schedule()
    lane = Lane("invoice", 5, schedule, progress)
    for position in (10, 20, 30):
        await lane.submit([ev("invoice-1", 0)], position)

    first, second, third = schedule.batches
    second.remaining = 0
    lane.complete(second)
    assert progress.reported == []
    first.remaining = 0
    lane.complete(first)
    assert progress.reported == [("invoice", 10), ("invoice", 20)]
    third.remaining = 0
    lane.complete(third)

    assert progress.reported == [("invoice", 10), ("invoice", 20), ("invoice", 30)]
    assert lane.in_flight == 0


async def test_an_empty_batch_is_reported_at_once_and_counts_no_events() -> None:
    progress = Progress()
    lane = Lane("invoice", 5, Schedule(), progress)

    await lane.submit([], 42)

    assert progress.reported == [("invoice", 42)]
    assert lane.events_in_flight == 0


async def test_submit_waits_while_read_ahead_events_are_in_flight() -> None:
    schedule = Schedule()
    lane = Lane("invoice", 3, schedule)
    await lane.submit([ev("invoice-1", 0), ev("invoice-2", 0)], 1)
    await lane.submit([ev("invoice-1", 1)], 2)
    submitted = anyio.Event()

    async def third() -> None:
        await lane.submit([ev("invoice-1", 2)], 3)
        submitted.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(third)
            await anyio.wait_all_tasks_blocked()
            assert not submitted.is_set()
            assert (lane.in_flight, lane.events_in_flight) == (2, 3)
            lane.complete(schedule.batches[0])
            await submitted.wait()

    assert lane.in_flight == 2
