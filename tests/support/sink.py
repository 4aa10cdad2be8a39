"""What the sink's unit tests share: events made up on the spot, a lane progress that records
completions, and ways to let the sink run until nothing more can happen."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import anyio
import anyio.lowlevel

from projector.model.events import Event
from projector.pipeline.lane import Lane

_EVENT_ID = "7f0c5f1e-1d52-4a0e-9d0c-1f3a4c8e2b6d"
_T0 = datetime(2024, 1, 1, tzinfo=UTC)
_global_positions = itertools.count(1)


def ev(stream: str, position: int) -> Event:
    """An event of ``stream`` at stream ``position``, at the next global position."""
    return Event(next(_global_positions), position, _T0, stream, "Happened", "{}", None, _EVENT_ID)


def evs(stream: str, positions: Sequence[int]) -> list[Event]:
    return [ev(stream, p) for p in positions]


class Completions:
    """A lane's progress: records the batches it reports done, in order, each by the index it
    was submitted with (given as its position)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def advance(self, lane: str, position: int) -> None:
        self.order.append(position)

    async def submit(self, lane: Lane, index: int, events: Sequence[Event]) -> None:
        await lane.submit(events, index)


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition()`` holds (bound it with ``anyio.fail_after``)."""
    while not condition():
        await anyio.lowlevel.checkpoint()


settle = anyio.wait_all_tasks_blocked  # run until every task waits: what can happen has
