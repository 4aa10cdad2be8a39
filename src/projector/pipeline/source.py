"""The source: one polling loop per category, feeding batches to the sink in global order.

Only an empty read counts as the tail: a short batch is followed by an immediate read, so a
catch-up never sleeps between batches. The loop sleeps ``tail_sleep`` after an empty read, and
`wake` cuts that sleep short (for a notification that new events were written). A read that
fails because the database is unavailable is retried with backoff from the same position, for
up to ``outage_limit`` seconds.

A `Gate` may hold events back (a projection's dependencies, see `dependencies`): the source
submits only the prefix of a batch it admits, moves its position to the first event held back,
and submits the rest as the gate lets it through. Each submission is a prefix of what is left
of the read, so batches still reach the sink in global order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from projector.model.events import Event, Read
from projector.pipeline.observe import NO_OBSERVER, Observer
from projector.reconnecting import outlasting

logger = logging.getLogger(__name__)


class CategoryReader(Protocol):
    async def read_category(self, category: str, position: int, batch_size: int) -> Read: ...


class BatchSink(Protocol):
    async def submit(self, events: Sequence[Event], position: int) -> None:
        """Take ``events``, read up to just below global ``position``."""
        ...


class Gate(Protocol):
    async def admit(self, events: Sequence[Event]) -> Sequence[Event]:
        """The prefix of ``events`` that may be handled now; waits until it is not empty."""
        ...


class OpenGate:
    """Admits every batch whole: a projection with no dependencies."""

    async def admit(self, events: Sequence[Event]) -> Sequence[Event]:
        return events


OPEN_GATE = OpenGate()


class CategorySource:
    """Reads one category from ``position`` on and submits each batch to ``sink`` with the
    position it was read up to (the sink's lane reports that position once the batch, and
    every one before it, is handled: that is what moves the checkpoint)."""

    def __init__(
        self,
        reader: CategoryReader,
        sink: BatchSink,
        category: str,
        *,
        position: int,
        batch_size: int,
        tail_sleep: float,
        outage_limit: float = 0.0,
        observer: Observer = NO_OBSERVER,
        gate: Gate = OPEN_GATE,
    ) -> None:
        self.category = category
        self.position = position  # the next global position to read
        self._reader = reader
        self._sink = sink
        self._batch_size = batch_size
        self._tail_sleep = tail_sleep
        self._outage_limit = outage_limit
        self._observer = observer
        self._gate = gate
        self._wakeup = anyio.Event()
        self.reached_tail = anyio.Event()

    def wake(self) -> None:
        """Read again now if the loop is sleeping at the tail."""
        self._wakeup.set()

    async def run(self, *, stop_at_tail: bool = False) -> None:
        """Poll forever (cancel to stop), or until the first empty read with ``stop_at_tail``."""
        while True:
            read = await outlasting(
                self._read,
                doing=f"reading {self.category}",
                limit=self._outage_limit,
                on_retry=self._observer.reconnecting,
            )
            if read.events:
                await self._submit_admitted(read)
                continue
            if read.resume_at > self.position:
                # Nothing for us, but the position moves past other members' events.
                await self._submit(read.events, read.resume_at)
            self._at_tail()
            if stop_at_tail:
                return
            await self._sleep()

    async def _read(self) -> Read:
        started = anyio.current_time()
        read = await self._reader.read_category(self.category, self.position, self._batch_size)
        self._observer.events_read(self.category, len(read.events), anyio.current_time() - started)
        return read

    async def _submit_admitted(self, read: Read) -> None:
        """Submit the read as the gate admits it, a prefix at a time."""
        events: Sequence[Event] = read.events
        while events:
            admitted = await self._gate.admit(events)
            events = events[len(admitted) :]
            # Everything below the first event held back is now submitted (or not ours).
            resume_at = events[0].global_position if events else read.resume_at
            await self._submit(admitted, resume_at)

    async def _submit(self, events: Sequence[Event], resume_at: int) -> None:
        self.position = resume_at
        logger.debug(
            "read %d events of %s up to %d",
            len(events),
            self.category,
            resume_at - 1,
            extra={
                "action": "source_batch_read",
                "category": self.category,
                "count": len(events),
                "position": resume_at,
            },
        )
        await self._sink.submit(events, resume_at)

    def _at_tail(self) -> None:
        if not self.reached_tail.is_set():
            logger.info(
                "%s read to its tail at %d",
                self.category,
                self.position,
                extra={
                    "action": "source_tail_reached",
                    "category": self.category,
                    "position": self.position,
                },
            )
            self.reached_tail.set()

    async def _sleep(self) -> None:
        with anyio.move_on_after(self._tail_sleep):
            await self._wakeup.wait()
        self._wakeup = anyio.Event()
