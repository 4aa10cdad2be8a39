"""What the sink's unit tests share: events made up on the spot, a lane progress that records
completions, a sink run with one such lane, and ways to let the sink run until nothing more can
happen."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NamedTuple

import anyio
import anyio.lowlevel

from projector.model.events import Event
from projector.pipeline.lane import Lane
from projector.pipeline.sink import StreamsSink

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


class SinkRun(NamedTuple):
    sink: StreamsSink
    lane: Lane  # named "l"
    done: Completions  # the lane's completions


@asynccontextmanager
async def sink_run(
    handler: Any,
    *,
    streams: int = 4,
    read_ahead: int = 10,
    stall_delay: float = 0.1,
    time_limit: float = 2.0,
    **options: Any,
) -> AsyncIterator[SinkRun]:
    """A sink calling ``handler`` (a span handler), with one lane whose completions are
    recorded, for the block; a sink that hangs fails after ``time_limit`` seconds instead."""
    with anyio.fail_after(time_limit):
        async with StreamsSink(
            handler,
            max_concurrent_streams=streams,
            max_read_ahead=read_ahead,
            stall_delay=stall_delay,
            **options,
        ) as sink:
            done = Completions()
            yield SinkRun(sink, sink.lane("l", done), done)


settle = anyio.wait_all_tasks_blocked  # run until every task waits: what can happen has
