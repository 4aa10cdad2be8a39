"""A lane: one source's entry into the sink, with its read-ahead limit and its batches, which it
reports complete strictly in the order they were submitted (what makes a checkpoint safe).

Read-ahead is counted in events, not batches, so that one bound serves a catch-up (few large
batches) and the head (many batches of an event or two) alike: at the head a slow stream holds
back only its own batches' completion, while the reader goes on for as many events as a
catch-up would keep in memory. A batch with no events counts as one, so that reads which only
move the position past other members' events are bounded too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

from projector.model.events import Event


class Progress(Protocol):
    """Where a lane reports how far it is done, in order: the checkpoint writer's interface."""

    def advance(self, lane: str, position: int) -> None:
        """Every event of ``lane`` below global ``position`` is handled."""


class NoProgress:
    """Told of progress, keeps none of it (a lane nobody checkpoints)."""

    def advance(self, lane: str, position: int) -> None:
        return None


NO_PROGRESS = NoProgress()


class Batch:
    __slots__ = ("done", "lane", "position", "remaining", "size", "weight")

    def __init__(self, lane: Lane, position: int, size: int) -> None:
        self.lane = lane
        self.position = position  # handled below this global position once it is done
        self.remaining = 0  # streams of this batch that have not yet handled past their events
        self.done = False
        self.size = size  # its events
        self.weight = max(size, 1)  # what it counts for against the read-ahead limit

    def stream_done(self) -> None:
        """One more of its streams has handled past its events; the last one completes the
        batch (its lane may then pass it to the checkpoint)."""
        self.remaining -= 1
        if self.remaining == 0:
            self.lane.complete(self)


Schedule = Callable[[Batch, Sequence[Event]], None]
"""Takes a batch's events into the sink's streams, counting in ``remaining`` those it waits on."""


class Lane:
    """Submitted batches in order, with at most ``max_read_ahead`` events in flight (see the
    module), reporting to ``progress`` how far it is done."""

    def __init__(
        self, name: str, max_read_ahead: int, schedule: Schedule, progress: Progress = NO_PROGRESS
    ) -> None:
        self.name = name
        self._max_read_ahead = max_read_ahead
        self._schedule = schedule
        self._progress = progress
        self._batches: deque[Batch] = deque()
        self._weight = 0  # of the batches in flight
        self._room = anyio.Event()  # set while fewer than max_read_ahead events are in flight
        self._room.set()
        self._empty = anyio.Event()
        self._empty.set()

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet reported complete."""
        return len(self._batches)

    @property
    def ahead(self) -> int:
        """What the batches in flight count for against ``max_read_ahead``: their events, an
        empty batch as one."""
        return self._weight

    @property
    def events_in_flight(self) -> int:
        """Events of the batches in flight, handled or not."""
        return sum(batch.size for batch in self._batches)

    async def submit(self, events: Sequence[Event], position: int) -> None:
        """Hand over a batch, read up to just below global ``position``; waits while
        ``max_read_ahead`` events are in flight (a batch larger than that still goes in alone).

        Once every event of the batch, and of every batch submitted before it on this lane, has
        been handled, the lane's progress is told: ``advance(name, position)``.
        """
        # A plain count, not a semaphore: acquiring one yields to the loop even when a slot is
        # free, which costs a loop iteration per batch for nothing.
        while self._weight >= self._max_read_ahead:
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        batch = Batch(self, position, len(events))
        self._batches.append(batch)
        self._weight += batch.weight
        if self._empty.is_set():
            self._empty = anyio.Event()
        self._schedule(batch, events)
        if batch.remaining == 0:
            self.complete(batch)

    async def wait_empty(self) -> None:
        """Return once every submitted batch has been reported complete."""
        await self._empty.wait()

    def complete(self, batch: Batch) -> None:
        """Mark ``batch`` done (no stream waits on it any more) and report what may be."""
        batch.done = True
        # Completions leave strictly in submit order: a later batch that finished first waits
        # here until every older one is done, so the position it reports is always safe.
        while self._batches and self._batches[0].done:
            done = self._batches.popleft()
            self._weight -= done.weight
            self._progress.advance(self.name, done.position)
        if self._weight < self._max_read_ahead:
            self._room.set()
        if not self._batches:
            self._empty.set()
