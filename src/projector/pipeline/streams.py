"""Per-stream state inside the sink: a stream's buffered span, handled position and failures,
and the batches waiting on it. Pure data and ordering rules; the sink does the scheduling.

These run once or twice per handler call, so they are written for the common case, a span of
events in ascending stream order that nothing has handled yet, and fall back to `merge` only
when events arrive duplicated or out of order.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from projector.model.events import Event
from projector.pipeline.lane import Batch


class Phase(enum.Enum):
    """Where a stream is in the sink; exactly one at a time.

    ::

        IDLE ──(events, a worker free)──> QUEUED ──(a worker takes it)──> RUNNING
        RUNNING ──(handled; more buffered)──> QUEUED     RUNNING ──(handled all)──> IDLE
        RUNNING ──(lost the database, or handled none)──> WAITING ──(its delay)──> IDLE
        RUNNING ──(failed: held out of the read path)──> HELD (its state dropped; new events
            dropped as read, until a replay from the stream itself brings it back)
        HELD ──(a replay nears the stream's end: `rejoining`)──> REJOINING ──(`rejoin`)──> IDLE

    Only an IDLE stream is queued, so a stream is never in the ready queue twice and never
    runs two calls at once; REJOINING and WAITING buffer new events without running them.
    """

    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # for a retry's delay, the database, or after a call that did nothing
    HELD = "held"  # out of the read path: its events are dropped (a replay reads them)
    REJOINING = "rejoining"  # a replay is finishing: buffer its events, run nothing


IDLE, QUEUED, RUNNING, WAITING, HELD, REJOINING = Phase


class StreamState:
    __slots__ = (
        "buffer",
        "failing_since",
        "failures",
        "name",
        "next_position",
        "pending",
        "phase",
        "running_since",
    )

    def __init__(
        self,
        name: str,
        buffer: list[Event] | None = None,
        pending: list[tuple[Batch, int]] | None = None,
    ) -> None:
        self.name = name
        self.next_position: int | None = None  # unknown until a first call returns
        # Unhandled events, ascending positions, no duplicates.
        self.buffer: list[Event] = [] if buffer is None else buffer
        # Batches waiting on this stream, oldest first: (batch, the position it needs handled).
        self.pending: list[tuple[Batch, int]] = [] if pending is None else pending
        self.phase = IDLE
        self.running_since = 0.0  # when the running call started (while RUNNING)
        self.failures = 0  # failed calls in a row
        self.failing_since: float | None = None

    def accept(self, events: list[Event]) -> int | None:
        """Buffer the events not yet handled; return the highest such position, if any."""
        floor = self.next_position
        if floor is not None and events[0].position < floor:
            events = [e for e in events if e.position >= floor]
            if not events:
                return None
        events = in_order(events)
        buffer = self.buffer
        if buffer and events[0].position <= buffer[-1].position:
            self.buffer = merge(buffer, events)
        else:
            buffer.extend(events)
        return events[-1].position

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
        return self.phase is IDLE and not (self.buffer or self.pending)


@dataclass(frozen=True, slots=True)
class TroubledStream:
    """A stream whose current call, or run of failures, has lasted ``seconds``."""

    stream_name: str
    state: str  # "running" or "failing" (in the sink), "retrying" (held out of the read path)
    seconds: float
    failures: int


def by_stream(events: Sequence[Event]) -> dict[str, list[Event]]:
    """A batch's events grouped by stream, streams in order of their first event, each span in
    stream order without duplicates (a read in global order already is: the check is one
    comparison per event after a stream's first)."""
    spans: dict[str, list[Event]] = {}
    disordered: set[str] = set()
    for event in events:
        name = event.stream_name
        span = spans.get(name)
        if span is None:
            spans[name] = [event]
        else:
            if event.position <= span[-1].position:
                disordered.add(name)
            span.append(event)
    for name in disordered:
        spans[name] = merge([], spans[name])
    return spans


def in_order(events: list[Event]) -> list[Event]:
    """``events`` itself when its positions ascend strictly, else a sorted copy without
    duplicates. A single event (the usual span during a catch-up) costs one length check."""
    if len(events) > 1:
        previous = events[0].position
        for event in events[1:]:
            if event.position <= previous:
                return merge([], events)
            previous = event.position
    return events


def merge(a: list[Event], b: list[Event]) -> list[Event]:
    """Events of both lists in stream order, one per position (the first seen wins)."""
    by_position: dict[int, Event] = {}
    for event in (*a, *b):
        by_position.setdefault(event.position, event)
    return [by_position[p] for p in sorted(by_position)]
