"""Per-stream state inside the sink: a stream's buffered span, handled position and failures,
and the batches waiting on it. Pure data and ordering rules; the sink does the scheduling."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

from projector.events import Event

if TYPE_CHECKING:
    from projector.sink import Lane


class Batch:
    __slots__ = ("done", "on_completed", "remaining")

    def __init__(self, on_completed: Callable[[], None]) -> None:
        self.on_completed = on_completed
        self.remaining = 0  # streams of this batch that have not yet handled past their events
        self.done = False


class StreamState:
    __slots__ = (
        "buffer",
        "busy",
        "busy_since",
        "failing_since",
        "failures",
        "held",
        "name",
        "next_position",
        "pending",
        "queued",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.next_position: int | None = None  # unknown until a first call returns
        self.buffer: list[Event] = []  # unhandled events, ascending positions, no duplicates
        self.pending: deque[tuple[Batch, int, Lane]] = deque()  # (batch, position needed, lane)
        self.busy = False
        self.queued = False
        self.held = False  # buffer events, run nothing (a parked stream being replayed)
        self.failures = 0  # failed calls in a row
        self.busy_since: float | None = None
        self.failing_since: float | None = None

    def accept(self, events: list[Event]) -> int | None:
        """Buffer the events not yet handled; return the highest such position, if any."""
        floor = self.next_position
        fresh = events if floor is None else [e for e in events if e.position >= floor]
        if not fresh:
            return None
        if not _ascending(fresh):
            fresh = merge([], fresh)
        buffer = self.buffer
        if buffer and fresh[0].position <= buffer[-1].position:
            self.buffer = merge(buffer, fresh)
        else:
            buffer.extend(fresh)
        return fresh[-1].position

    def settle(self, handled: list[Event], next_position: int) -> bool:
        """Record a call's outcome; return whether the call made progress."""
        first = handled[0].position
        self.next_position = next_position
        leftover = [e for e in handled if e.position >= next_position]
        arrived = [e for e in self.buffer if e.position >= next_position]
        self.buffer = merge(leftover, arrived) if leftover else arrived
        return next_position > first

    @property
    def forgettable(self) -> bool:
        return not (self.buffer or self.pending or self.busy or self.queued or self.held)


@dataclass(frozen=True, slots=True)
class TroubledStream:
    """A stream whose current call, or run of failures, has lasted ``seconds``."""

    stream_name: str
    state: str  # "running" or "failing"
    seconds: float
    failures: int


def _ascending(events: list[Event]) -> bool:
    return all(a.position < b.position for a, b in pairwise(events))


def merge(a: list[Event], b: list[Event]) -> list[Event]:
    """Events of both lists in stream order, one per position (the first seen wins)."""
    by_position: dict[int, Event] = {}
    for event in (*a, *b):
        by_position.setdefault(event.position, event)
    return [by_position[p] for p in sorted(by_position)]
