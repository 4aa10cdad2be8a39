"""The streams sink: per-stream scheduling of handler calls, with no SQL and no I/O of its own.

Sources submit batches to a `Lane` (one per category). The sink splits each batch into per-stream
spans and runs them on a fixed set of workers, so that:

- at most ``max_concurrent_streams`` handler calls run at once (the number of workers; a batch
  handler's sink is `projector.pipeline.batch_sink`'s);
- a stream has at most one call at a time, and sees its events in stream order: events that
  arrive while it is busy wait in its buffer and go to the next call, merged across batches;
- events below a stream's handled position, and duplicates, are dropped;
- a lane's ``submit`` blocks while ``max_read_ahead`` events of its batches are incomplete
  (see `lane`);
- a batch completes once every stream in it has handled past its events, and a lane reports
  completions strictly in submit order, which is what makes a checkpoint safe.

A stream's state is forgotten as soon as no buffered event and no incomplete batch needs it, so
memory follows what is in flight, not how many streams exist.

A failed call is the business of that stream alone: ``on_failure`` decides (see `failures`)
whether it is held out of the read path (its events, now and later, are dropped and its
batches released, until a replay from the stream itself brings it back with `rejoining` and
`rejoin`), retried in place after a delay or once something is ready (its batches, and so the
checkpoint, wait: for a lost connection, which is nobody's stream's fault), or the run stops.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import Self

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from projector.errors import HandlerError
from projector.model.events import Event
from projector.model.failures import HandlerTimeout, Hold, Retry, RetryWhen
from projector.pipeline.calls import (
    Call,
    FailureHandler,
    SpanHandler,
    stop_on_failure,
)
from projector.pipeline.lane import NO_PROGRESS, Batch, Lane, Progress
from projector.pipeline.observe import NO_OBSERVER, Observer
from projector.pipeline.streams import (
    HELD,
    IDLE,
    QUEUED,
    REJOINING,
    RUNNING,
    WAITING,
    StreamState,
    TroubledStream,
    by_stream,
    merge,
)

DEFAULT_STALL_DELAY = 0.1
# How long a worker runs handler calls that never wait before it lets other tasks run (the
# sources' reads, timers, the metrics endpoint). Checked once per call, so a single call that
# computes for longer still holds the loop for as long as it takes.
YIELD_AFTER = 0.0005
MAX_SKIP_HINTS = 100_000  # forgotten streams whose handler asked to skip ahead (skip_to)
TAKE_OUT_POLL = 0.05  # seconds between looks for the end of a call of a stream taken out


class StreamsSink:
    """Runs span handlers on ``max_concurrent_streams`` workers; use as ``async with``."""

    def __init__(
        self,
        handle: SpanHandler,
        *,
        max_concurrent_streams: int,
        max_read_ahead: int,
        stall_delay: float = DEFAULT_STALL_DELAY,
        on_failure: FailureHandler = stop_on_failure,
        handler_timeout: float | None = None,
        held: frozenset[str] = frozenset(),
        observer: Observer = NO_OBSERVER,
    ) -> None:
        """``max_read_ahead`` counts events per lane (see `lane`); ``held`` are the streams out
        of the read path from the start."""
        if max_concurrent_streams < 1 or max_read_ahead < 1:
            raise ValueError("max_concurrent_streams and max_read_ahead must be at least 1")
        self._handle = handle
        self._workers = max_concurrent_streams
        self._max_read_ahead = max_read_ahead
        self._stall_delay = stall_delay
        self._on_failure = on_failure
        self._handler_timeout = handler_timeout
        self._call_hook = observer.call_hook()
        self._handled = 0
        self._held: set[str] = set(held)
        self._streams: dict[str, StreamState] = {}
        # A stream that skipped ahead must keep its position after it is forgotten, or its
        # own later events (the usual reason to skip) would be delivered. Oldest hints go first.
        self._skip_hints: OrderedDict[str, int] = OrderedDict()
        self._lanes: dict[str, Lane] = {}
        # Streams ready to run, oldest first; workers wait on the event when it is empty.
        self._ready: deque[StreamState] = deque()
        self._work_ready = anyio.Event()
        self._task_group: TaskGroup | None = None
        self._exit_stack = AsyncExitStack()
        self._worker_scopes: list[anyio.CancelScope] = []
        self._calls: list[Call] = []
        self._stopping = False
        self._busy = 0
        self._idle = anyio.Event()

    # -- observation ------------------------------------------------------------------------

    @property
    def busy_streams(self) -> int:
        """Handler calls running right now."""
        return self._busy

    @property
    def handled_events(self) -> int:
        """Events given to handler calls that returned without error, since the start."""
        return self._handled

    @property
    def tracked_streams(self) -> int:
        """Streams the sink holds state for (buffered events or incomplete batches)."""
        return len(self._streams)

    @property
    def held_streams(self) -> frozenset[str]:
        """Streams out of the read path: their events are dropped as read."""
        return frozenset(self._held)

    @property
    def failing_streams(self) -> int:
        """Streams whose last call failed and that wait in place for their retry."""
        return sum(1 for stream in self._streams.values() if stream.failing_since is not None)

    def handled_in_flight(self) -> dict[str, int]:
        """Per lane, the events of its batches in flight that are handled already: those of
        the streams that went on while an older batch waits for a stream that retries.
        (Read at a moment of the loop's choosing: a gauge's figure, not a ledger's.)"""
        unhandled: dict[str, int] = {}
        running = {
            stream.name: len(events) for call in self._calls for stream, events in call.spans()
        }
        for stream in self._streams.values():
            if stream.pending:
                lane = stream.pending[0][0].lane.name
                waiting = len(stream.buffer) + running.get(stream.name, 0)
                unhandled[lane] = unhandled.get(lane, 0) + waiting
        return {
            name: max(lane.events_in_flight - unhandled.get(name, 0), 0)
            for name, lane in self._lanes.items()
        }

    def troubled(self, *, longer_than: float) -> list[TroubledStream]:
        """Streams running one call, or failing, for more than ``longer_than`` seconds."""
        now, found = time.monotonic(), []
        for stream in self._streams.values():
            if stream.phase is RUNNING and now - stream.running_since > longer_than:
                found.append(
                    TroubledStream(
                        stream.name, "running", now - stream.running_since, stream.failures
                    )
                )
            elif stream.failing_since is not None and now - stream.failing_since > longer_than:
                found.append(
                    TroubledStream(
                        stream.name, "failing", now - stream.failing_since, stream.failures
                    )
                )
        return found

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the workers, in a task group that leaving the block closes: first cancelling
        every call still running (`stop` first lets them finish), then waiting for them."""
        async with AsyncExitStack() as stack:
            await self._start(stack)
            self._exit_stack = stack.pop_all()
        return self

    async def _start(self, exit_stack: AsyncExitStack) -> None:
        tasks = await exit_stack.enter_async_context(anyio.create_task_group())
        exit_stack.callback(self._cancel_everything, tasks)
        self._task_group = tasks
        for index in range(self._workers):
            call = Call()
            self._calls.append(call)
            tasks.start_soon(self._work, call, name=f"projector-sink-worker-{index}")
        if self._handler_timeout is not None:
            tasks.start_soon(
                self._watch_timeouts, self._handler_timeout, name="projector-sink-timeouts"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._exit_stack.__aexit__(exc_type, exc, tb)

    def _cancel_everything(self, tasks: TaskGroup) -> None:
        # A worker that has yet to enter its shielded scope (the sink left before it first
        # ran) finds the sink stopping and ends; the others are cancelled in their scopes.
        self._stop_scheduling()
        tasks.cancel_scope.cancel()
        for scope in self._worker_scopes:
            scope.cancel()

    def lane(self, name: str, progress: Progress = NO_PROGRESS) -> Lane:
        """The lane for one source, reporting to ``progress``; each name gets one lane."""
        if name in self._lanes:
            raise ValueError(f"lane {name!r} is already open")
        lane = Lane(name, self._max_read_ahead, self._schedule, progress)
        self._lanes[name] = lane
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
        self._work_ready.set()

    # -- scheduling -------------------------------------------------------------------------

    def _schedule(self, batch: Batch, events: Sequence[Event]) -> None:
        spans = by_stream(events)
        streams, held, hints, ready = self._streams, self._held, self._skip_hints, self._ready
        waiting = 0
        for name, span in spans.items():
            stream = streams.get(name)
            if stream is None and not (hints and name in hints):
                # The common case in a catch-up: a stream with no state (nothing buffered,
                # nothing running) gets one holding this span, and is ready at once. A held
                # stream never has state (holding drops it; `rejoining` takes it out of `_held`).
                if name in held:
                    continue
                stream = streams[name] = StreamState(name, span, [(batch, span[-1].position)])
                waiting += 1
                if not self._stopping:
                    stream.phase = QUEUED
                    ready.append(stream)
                continue
            if stream is None:
                stream = streams[name] = StreamState(name)
                stream.next_position = hints.pop(name)
            waiting += self._buffer(batch, stream, span)
        batch.remaining += waiting
        if ready:
            self._work_ready.set()

    def _buffer(self, batch: Batch, stream: StreamState, span: list[Event]) -> bool:
        """Add a span to a stream that has state; whether ``batch`` now waits on it."""
        needed = stream.accept(span)
        if needed is None:
            self._forget_if_idle(stream)
            return False
        stream.pending.append((batch, needed))
        self._enqueue(stream)
        return True

    def _enqueue(self, stream: StreamState) -> None:
        if stream.phase is IDLE and not self._stopping:
            stream.phase = QUEUED
            self._ready.append(stream)
            self._work_ready.set()

    async def _work(self, call: Call) -> None:
        # Shielded: cancelling the owner (a signal) must not cut a handler call short. `stop`
        # lets running calls finish within its grace period; leaving the sink cancels the rest.
        with anyio.CancelScope(shield=True) as shield:
            self._worker_scopes.append(shield)
            while not self._stopping:
                # One scope for many calls, not one per call (entering a scope costs
                # microseconds): `_watch_timeouts` cancels it to cut a call short.
                with anyio.CancelScope() as call.scope:
                    await self._serve(call)
                if call.running:
                    await self._timed_out(call)

    async def _serve(self, call: Call) -> None:
        ready, yielded = self._ready, time.monotonic()
        while not (self._stopping or call.scope.cancel_called):
            if not ready:
                await self._wait_for_work()
                yielded = time.monotonic()
                continue
            now = time.monotonic()
            if now - yielded > YIELD_AFTER:
                # Handlers that never wait would otherwise starve every other task. Before
                # taking a stream, not after: a stream taken is no longer queued, and must not
                # wait for its call with the loop open to another worker queueing it again.
                await anyio.lowlevel.checkpoint()
                yielded = time.monotonic()
                continue
            stream = ready.popleft()
            if stream.phase is not QUEUED:
                continue  # held while it waited in the queue
            if stream.buffer:
                await self._run(stream, call, now)
            else:
                stream.phase = IDLE

    async def _wait_for_work(self) -> None:
        if self._work_ready.is_set():
            self._work_ready = anyio.Event()
        await self._work_ready.wait()

    async def _watch_timeouts(self, limit: float) -> None:
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            now = time.monotonic()
            for call in self._calls:
                if call.running and now - call.started > limit:
                    call.scope.cancel()

    async def _timed_out(self, call: Call) -> None:
        """A call cut short by ``handler_timeout``: each of its streams failed (a batch call's
        transaction, if any, rolled back with it)."""
        spans, elapsed = call.spans(), time.monotonic() - call.started
        call.stream, call.events, call.batch = None, [], []
        error = HandlerTimeout(
            f"the call took longer than handler_timeout ({self._handler_timeout} s)"
        )
        for stream, events in spans:
            if self._call_hook is not None:
                self._call_hook(stream.name, len(events), elapsed, error)
            await self._failed(stream, events, error)

    async def _run(self, stream: StreamState, call: Call, started: float) -> None:
        # The hot path of a catch-up, once per call: kept flat, with the common outcome (every
        # event handled, nothing new buffered meanwhile) settled inline.
        events, stream.buffer = stream.buffer, []
        stream.phase, stream.running_since = RUNNING, started
        call.started = started
        call.stream, call.events = stream, events
        self._busy += 1
        try:
            next_position = await self._handle(stream.name, events)
        except BaseException as exc:
            self._idle_again(stream)
            if not isinstance(exc, Exception):
                raise  # cancelled: a timeout (see `_timed_out`: call.stream stays set) or the end
            call.stream = None
            if self._call_hook is not None:
                self._call_hook(stream.name, len(events), time.monotonic() - started, exc)
            await self._failed(stream, events, exc)
            return
        self._idle_again(stream)
        call.stream = None
        if self._call_hook is not None:
            self._call_hook(stream.name, len(events), time.monotonic() - started, None)
        self._succeeded(stream, events, next_position)

    def _succeeded(self, stream: StreamState, events: list[Event], next_position: int) -> None:
        """Settle a call that returned: release the batches it handled past."""
        self._handled += len(events)
        if stream.phase is HELD:
            return  # held while its call ran: what it left is dropped
        if stream.failing_since is not None:
            stream.failures, stream.failing_since = 0, None
        if stream.buffer or next_position != events[-1].position + 1:
            self._settle(stream, events, next_position)
            return
        stream.next_position = next_position
        # The call took the whole buffer, so every batch waiting on the stream needs a position
        # it handled: all of them are released, and the stream can be forgotten.
        for batch, _ in stream.pending:
            batch.stream_done()
        stream.pending.clear()
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]

    def _idle_again(self, stream: StreamState) -> None:
        if stream.phase is RUNNING:  # not held while it ran
            stream.phase = IDLE
        self._busy -= 1
        if self._busy == 0 and self._stopping:
            self._idle.set()  # `stop` waits for it

    async def _failed(self, stream: StreamState, events: list[Event], error: Exception) -> None:
        if stream.phase is HELD:
            return  # held while its call ran: its events are dropped
        # Waiting while the decision is made, so new events cannot start a second call.
        stream.phase = WAITING
        stream.buffer = merge(events, stream.buffer)
        stream.failures += 1
        if stream.failing_since is None:
            stream.failing_since = time.monotonic()
        decision = await self._on_failure(stream.name, events, error, stream.failures)
        if stream.phase is HELD:
            return  # taken out meanwhile (`take_out`): the replay that follows has its events
        if isinstance(decision, Retry):
            self._requeue_after(stream, decision.delay)
        elif isinstance(decision, RetryWhen):
            stream.failures -= 1  # not the stream's failure: its backoff stays where it was
            self._requeue_when(stream, decision.ready)
        elif isinstance(decision, Hold):
            self._hold(stream)
        else:
            self._stop_scheduling()
            raise HandlerError(
                f"handler failed on stream {stream.name!r} at position {events[0].position} "
                f"(global {events[0].global_position}): {error!r}; {decision.reason}"
            ) from error

    def _settle(self, stream: StreamState, events: list[Event], next_position: int) -> None:
        progressed = stream.settle(events, next_position)
        self._free_batches(stream)
        if stream.buffer:
            if progressed:
                self._enqueue(stream)
            else:
                # A call that handled nothing is asked again after a pause, not in a hot loop.
                self._requeue_after(stream, self._stall_delay)
        else:
            self._forget_if_idle(stream, skipped=next_position > events[-1].position + 1)

    def _forget_if_idle(self, stream: StreamState, *, skipped: bool = False) -> None:
        if not stream.forgettable or self._streams.get(stream.name) is not stream:
            return
        del self._streams[stream.name]
        if skipped and stream.next_position is not None:
            self._skip_hints[stream.name] = stream.next_position
            if len(self._skip_hints) > MAX_SKIP_HINTS:
                self._skip_hints.popitem(last=False)

    def _requeue_after(self, stream: StreamState, delay: float) -> None:
        self._requeue_when(stream, partial(anyio.sleep, delay))

    def _requeue_when(self, stream: StreamState, ready: Callable[[], Awaitable[object]]) -> None:
        # Waiting meanwhile, so that new events for the stream do not run it early.
        stream.phase = WAITING
        assert self._task_group is not None
        self._task_group.start_soon(self._requeue_later, stream, ready, name="projector-requeue")

    async def _requeue_later(
        self, stream: StreamState, ready: Callable[[], Awaitable[object]]
    ) -> None:
        await ready()
        if stream.phase is WAITING:  # not held meanwhile
            stream.phase = IDLE
            self._enqueue(stream)

    # -- held streams -----------------------------------------------------------------------

    def hold(self, stream_name: str) -> None:
        """Take the stream out of the read path: drop its events, now and later, and release
        its batches. Its owner must have recorded where it stands (its first unhandled event)."""
        stream = self._streams.get(stream_name)
        if stream is None:
            self._held.add(stream_name)
        else:
            self._hold(stream)

    def _hold(self, stream: StreamState) -> None:
        self._held.add(stream.name)
        self._skip_hints.pop(stream.name, None)
        stream.buffer, stream.phase = [], HELD
        pending, stream.pending = stream.pending, []
        for batch, _ in pending:
            batch.stream_done()
        if self._streams.get(stream.name) is stream:
            del self._streams[stream.name]

    async def take_out(self, stream_name: str) -> None:
        """Hold a stream the sink runs (see `hold`: its owner must have recorded where to
        replay it from), and return once no call given its events runs any more, so that a
        replay from the stream itself never runs beside one. A call already running ends as
        it would (within ``handler_timeout``, if set); what it leaves is dropped."""
        self.hold(stream_name)
        # Polled: taking a stream out is an operator's rare request, and the calls that could
        # hold it are few; a wake-up per call end would cost every call on the hot path.
        while self._calling(stream_name):  # noqa: ASYNC110 (polled on purpose, see above)
            await anyio.sleep(TAKE_OUT_POLL)

    def _calling(self, stream_name: str) -> bool:
        """Whether a call given the stream's events runs now."""
        for call in self._calls:
            if call.stream is not None and call.stream.name == stream_name:
                return True
            if any(stream.name == stream_name for stream, _ in call.batch):
                return True
            if any(stream_name in unit.spans for unit in call.units):
                return True
        return False

    def rejoining(self, stream_name: str) -> None:
        """Keep a held stream's new events from now on, without running them, until `rejoin`:
        a replay about to read the stream's last events calls it first, so that no event is
        dropped after the replay's last read."""
        self._held.discard(stream_name)
        stream = self._streams.get(stream_name)
        if stream is None:
            stream = self._streams[stream_name] = StreamState(stream_name)
        stream.phase = REJOINING

    def rejoin(self, stream_name: str, next_position: int) -> None:
        """Run a rejoining stream again, from stream position ``next_position`` on."""
        stream = self._streams[stream_name]
        stream.phase, stream.failures, stream.failing_since = IDLE, 0, None
        stream.next_position = next_position
        stream.buffer = [e for e in stream.buffer if e.position >= next_position]
        self._free_batches(stream)
        if stream.buffer:
            self._enqueue(stream)
        else:
            # The replay may have handled events the source has yet to read: keep the position.
            self._forget_if_idle(stream, skipped=True)

    def _free_batches(self, stream: StreamState) -> None:
        """Tell the batches waiting on this stream that it has handled past their events."""
        handled_below = stream.next_position
        assert handled_below is not None
        pending = stream.pending
        released = 0
        for batch, needed in pending:
            if needed >= handled_below:
                break
            released += 1
            batch.stream_done()
        del pending[:released]
