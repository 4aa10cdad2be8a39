"""The source: one polling loop per category, feeding batches to the sink in global order.

Only an empty read counts as the tail: a short batch is followed by an immediate read, so a
catch-up never sleeps between batches. The next read is sent as soon as a read's rows are in,
before they are made into events and go to the sink: the server looks for the next batch while
this process handles the last one, instead of each waiting for the other in turn (one read is
ahead at most). The loop sleeps ``tail_sleep`` after an empty read, and `wake` cuts that sleep
short (for a notification that new events were written). A read that fails because the
database is unavailable is retried with backoff from the same position, for up to
``outage_limit`` seconds.

A `Gate` may hold events back (a projection's dependencies, see `dependencies`): the source
submits only the prefix of a batch it admits, moves its position to the first event held back,
and submits the rest as the gate lets it through. Each submission is a prefix of what is left
of the read, so batches still reach the sink in global order.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

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
        failure: Exception | None = None
        async with anyio.create_task_group() as tasks:
            try:
                await self._poll(_ReadAhead(tasks, self._read_outlasting), stop_at_tail)
            except Exception as exc:
                failure = exc  # raised below as itself, not in the task group's ExceptionGroup
            tasks.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _poll(self, ahead: _ReadAhead, stop_at_tail: bool) -> None:
        await ahead.start(self.position)
        while True:
            read = await ahead.take()
            if read.found:
                # The server looks for the next batch while this one's rows are made into
                # events and go to the sink.
                seconds = ahead.seconds
                await ahead.start(read.resume_at)
                events = await read.load()
                self._observer.events_read(self.category, len(events), seconds)
                await self._submit_admitted(events, read.resume_at)
                continue
            self._observer.events_read(self.category, 0, ahead.seconds)
            if read.resume_at > self.position:
                # Nothing for us, but the position moves past other members' events.
                await self._submit([], read.resume_at)
            self._at_tail()
            if stop_at_tail:
                return
            await self._sleep()
            await ahead.start(self.position)

    async def _read_outlasting(self, position: int) -> Read:
        return await outlasting(
            partial(self._reader.read_category, self.category, position, self._batch_size),
            doing=f"reading {self.category}",
            limit=self._outage_limit,
            on_retry=self._observer.reconnecting,
        )

    async def _submit_admitted(self, events: Sequence[Event], resume_at: int) -> None:
        """Submit a read's events as the gate admits them, a prefix at a time (when it had
        none of ours, only its position)."""
        if not events:
            await self._submit(events, resume_at)
        while events:
            admitted = await self._gate.admit(events)
            events = events[len(admitted) :]
            # Everything below the first event held back is now submitted (or not ours).
            await self._submit(admitted, events[0].global_position if events else resume_at)

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


class _ReadAhead:
    """The source's one read in flight: started, then taken, in turn. Its outcome, an error
    included, is kept for `take`, so that it surfaces where the source waits for it and as
    itself (not wrapped by the task group)."""

    def __init__(self, tasks: TaskGroup, read: Callable[[int], Awaitable[Read]]) -> None:
        self._tasks = tasks
        self._read = read
        self._done = anyio.Event()
        self._outcome: Read | Exception | None = None
        self.seconds = 0.0  # how long the read taken last took (outage retries included)

    async def start(self, position: int) -> None:
        """Read from ``position`` on, in the background; returns once the read is on its way
        (one turn of the loop lets it send its statement)."""
        self._done, self._outcome = anyio.Event(), None
        self._tasks.start_soon(self._run, position, self._done)
        await anyio.lowlevel.checkpoint()

    async def take(self) -> Read:
        """The read started last, once it is done; its error if it failed."""
        await self._done.wait()
        outcome, self._outcome = self._outcome, None
        if isinstance(outcome, Exception):
            raise outcome
        assert outcome is not None
        return outcome

    async def _run(self, position: int, done: anyio.Event) -> None:
        started = anyio.current_time()
        try:
            self._outcome = await self._read(position)
        except Exception as exc:
            self._outcome = exc
        finally:
            self.seconds = anyio.current_time() - started
            done.set()
