"""The streams sink: per-stream scheduling of handler calls, with no SQL and no I/O of its own.

Sources submit batches to a `Lane` (one per category). The sink splits each batch into per-stream
spans and runs them on a fixed set of workers, so that:

- at most ``max_concurrent_streams`` handler calls run at once (the number of workers);
- a stream has at most one call at a time, and sees its events in stream order: events that
  arrive while it is busy wait in its buffer and go to the next call, merged across batches;
- events below a stream's handled position, and duplicates, are dropped;
- a lane's ``submit`` blocks while ``max_read_ahead`` of its batches are incomplete;
- a batch completes once every stream in it has handled past its events, and a lane reports
  completions strictly in submit order, which is what makes a checkpoint safe.

A stream's state is forgotten as soon as no buffered event and no incomplete batch needs it, so
memory follows what is in flight, not how many streams exist.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from itertools import pairwise
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from projector.errors import HandlerError
from projector.events import Event

SpanHandler = Callable[[str, list[Event]], Awaitable[int]]
"""Handles one stream's events (in stream order) and returns the stream position to expect next:
``events[-1].position + 1`` when all were handled, less when only some were, more to skip ahead."""

DEFAULT_STALL_DELAY = 0.1
MAX_SKIP_HINTS = 100_000  # forgotten streams whose handler asked to skip ahead (skip_to)


class _Batch:
    __slots__ = ("done", "on_completed", "remaining")

    def __init__(self, on_completed: Callable[[], None]) -> None:
        self.on_completed = on_completed
        self.remaining = 0  # streams of this batch that have not yet handled past their events
        self.done = False


class _Stream:
    __slots__ = ("buffer", "busy", "name", "next_position", "pending", "queued")

    def __init__(self, name: str) -> None:
        self.name = name
        self.next_position: int | None = None  # unknown until a first call returns
        self.buffer: list[Event] = []  # unhandled events, ascending positions, no duplicates
        self.pending: deque[tuple[_Batch, int, Lane]] = deque()  # (batch, position needed, lane)
        self.busy = False
        self.queued = False

    def accept(self, events: list[Event]) -> int | None:
        """Buffer the events not yet handled; return the highest such position, if any."""
        floor = self.next_position
        fresh = events if floor is None else [e for e in events if e.position >= floor]
        if not fresh:
            return None
        if not _ascending(fresh):
            fresh = _merge([], fresh)
        buffer = self.buffer
        if buffer and fresh[0].position <= buffer[-1].position:
            self.buffer = _merge(buffer, fresh)
        else:
            buffer.extend(fresh)
        return fresh[-1].position

    def settle(self, handled: list[Event], next_position: int) -> bool:
        """Record a call's outcome; return whether the call made progress."""
        first = handled[0].position
        self.next_position = next_position
        leftover = [e for e in handled if e.position >= next_position]
        arrived = [e for e in self.buffer if e.position >= next_position]
        self.buffer = _merge(leftover, arrived) if leftover else arrived
        return next_position > first

    @property
    def forgettable(self) -> bool:
        return not (self.buffer or self.pending or self.busy or self.queued)


def _ascending(events: list[Event]) -> bool:
    return all(a.position < b.position for a, b in pairwise(events))


def _merge(a: list[Event], b: list[Event]) -> list[Event]:
    """Events of both lists in stream order, one per position (the first seen wins)."""
    by_position: dict[int, Event] = {}
    for event in (*a, *b):
        by_position.setdefault(event.position, event)
    return [by_position[p] for p in sorted(by_position)]


class Lane:
    """One source's entry into the sink: its read-ahead limit and its in-order completions."""

    def __init__(self, sink: StreamsSink, name: str, max_read_ahead: int) -> None:
        self.name = name
        self._sink = sink
        self._slots = anyio.Semaphore(max_read_ahead)
        self._batches: deque[_Batch] = deque()
        self._empty = anyio.Event()
        self._empty.set()

    @property
    def in_flight(self) -> int:
        """Batches submitted and not yet reported complete."""
        return len(self._batches)

    async def submit(self, events: Sequence[Event], on_completed: Callable[[], None]) -> None:
        """Hand over a batch; waits while ``max_read_ahead`` batches are in flight.

        ``on_completed`` is called once every event of the batch, and of every batch submitted
        before it on this lane, has been handled.
        """
        await self._slots.acquire()
        batch = _Batch(on_completed)
        self._batches.append(batch)
        if self._empty.is_set():
            self._empty = anyio.Event()
        self._sink._schedule(self, batch, events)
        if batch.remaining == 0:
            self._complete(batch)

    async def wait_empty(self) -> None:
        """Return once every submitted batch has been reported complete."""
        await self._empty.wait()

    def _complete(self, batch: _Batch) -> None:
        batch.done = True
        # Completions leave strictly in submit order: a later batch that finished first waits
        # here until every older one is done, so the position it reports is always safe.
        while self._batches and self._batches[0].done:
            done = self._batches.popleft()
            self._slots.release()
            done.on_completed()
        if not self._batches:
            self._empty.set()


class StreamsSink:
    """Runs span handlers on ``max_concurrent_streams`` workers; use as ``async with``."""

    def __init__(
        self,
        handle: SpanHandler,
        *,
        max_concurrent_streams: int,
        max_read_ahead: int,
        stall_delay: float = DEFAULT_STALL_DELAY,
    ) -> None:
        if max_concurrent_streams < 1 or max_read_ahead < 1:
            raise ValueError("max_concurrent_streams and max_read_ahead must be at least 1")
        self._handle = handle
        self._workers = max_concurrent_streams
        self._max_read_ahead = max_read_ahead
        self._stall_delay = stall_delay
        self._streams: dict[str, _Stream] = {}
        # A stream that skipped ahead must keep its position after it is forgotten, or its
        # own later events (the usual reason to skip) would be delivered. Oldest hints go first.
        self._skip_hints: OrderedDict[str, int] = OrderedDict()
        self._lanes: dict[str, Lane] = {}
        self._ready_in: MemoryObjectSendStream[_Stream]
        self._ready_out: MemoryObjectReceiveStream[_Stream]
        self._ready_in, self._ready_out = anyio.create_memory_object_stream[_Stream](math.inf)
        self._task_group: TaskGroup | None = None
        self._worker_scopes: list[anyio.CancelScope] = []
        self._stopping = False
        self._busy = 0
        self._idle = anyio.Event()

    # -- observation ------------------------------------------------------------------------

    @property
    def busy_streams(self) -> int:
        """Handler calls running right now."""
        return self._busy

    @property
    def tracked_streams(self) -> int:
        """Streams the sink holds state for (buffered events or incomplete batches)."""
        return len(self._streams)

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        for index in range(self._workers):
            self._task_group.start_soon(self._work, name=f"projector-sink-worker-{index}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._task_group is not None
        self._task_group.cancel_scope.cancel()
        for scope in self._worker_scopes:
            scope.cancel()
        return await self._task_group.__aexit__(exc_type, exc, tb)

    def lane(self, name: str) -> Lane:
        """The lane for one source; each name gets one lane."""
        if name in self._lanes:
            raise ValueError(f"lane {name!r} is already open")
        lane = self._lanes[name] = Lane(self, name, self._max_read_ahead)
        return lane

    async def stop(self, *, grace_period: float) -> bool:
        """Start no new handler call; wait up to ``grace_period`` s for running ones to finish.

        Returns whether every running call finished in time.
        """
        self._stop_scheduling()
        if self._busy:
            if self._idle.is_set():
                self._idle = anyio.Event()
            with anyio.move_on_after(grace_period):
                await self._idle.wait()
        return self._busy == 0

    def _stop_scheduling(self) -> None:
        self._stopping = True
        self._ready_in.close()

    # -- scheduling -------------------------------------------------------------------------

    def _schedule(self, lane: Lane, batch: _Batch, events: Sequence[Event]) -> None:
        spans: dict[str, list[Event]] = {}
        for event in events:
            span = spans.get(event.stream_name)
            if span is None:
                spans[event.stream_name] = [event]
            else:
                span.append(event)
        streams = self._streams
        for name, span in spans.items():
            stream = streams.get(name)
            if stream is None:
                stream = streams[name] = _Stream(name)
                stream.next_position = self._skip_hints.pop(name, None)
            needed = stream.accept(span)
            if needed is None:
                self._forget_if_idle(stream)
                continue
            batch.remaining += 1
            stream.pending.append((batch, needed, lane))
            self._enqueue(stream)

    def _enqueue(self, stream: _Stream) -> None:
        if not (stream.busy or stream.queued or self._stopping):
            stream.queued = True
            self._ready_in.send_nowait(stream)

    async def _work(self) -> None:
        # Shielded: cancelling the owner (a signal) must not cut a handler call short. `stop`
        # lets running calls finish within its grace period; leaving the sink cancels the rest.
        with anyio.CancelScope(shield=True) as scope:
            self._worker_scopes.append(scope)
            async for stream in self._ready_out:
                stream.queued = False
                if self._stopping:
                    break
                if stream.buffer:
                    await self._run(stream)

    async def _run(self, stream: _Stream) -> None:
        events, stream.buffer = stream.buffer, []
        stream.busy = True
        self._busy += 1
        try:
            next_position = await self._handle(stream.name, events)
        except Exception as exc:
            self._stop_scheduling()
            raise HandlerError(
                f"handler failed on stream {stream.name!r} at position {events[0].position} "
                f"(global {events[0].global_position}): {exc!r}"
            ) from exc
        finally:
            stream.busy = False
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()
        progressed = stream.settle(events, next_position)
        self._release(stream)
        if stream.buffer:
            if progressed:
                self._enqueue(stream)
            else:
                self._stall(stream)
        else:
            self._forget_if_idle(stream, skipped=next_position > events[-1].position + 1)

    def _forget_if_idle(self, stream: _Stream, *, skipped: bool = False) -> None:
        if not stream.forgettable:
            return
        del self._streams[stream.name]
        if skipped and stream.next_position is not None:
            self._skip_hints[stream.name] = stream.next_position
            if len(self._skip_hints) > MAX_SKIP_HINTS:
                self._skip_hints.popitem(last=False)

    def _stall(self, stream: _Stream) -> None:
        # A call that handled nothing is asked again after a pause, not in a hot loop.
        stream.queued = True
        assert self._task_group is not None
        self._task_group.start_soon(self._requeue_later, stream, name="projector-sink-stall")

    async def _requeue_later(self, stream: _Stream) -> None:
        await anyio.sleep(self._stall_delay)
        stream.queued = False
        self._enqueue(stream)

    def _release(self, stream: _Stream) -> None:
        """Tell the batches waiting on this stream that it has handled past their events."""
        handled_below = stream.next_position
        assert handled_below is not None
        pending = stream.pending
        while pending and pending[0][1] < handled_below:
            batch, _, lane = pending.popleft()
            batch.remaining -= 1
            if batch.remaining == 0:
                lane._complete(batch)
