"""The sink of a batch handler: each read batch grouped by stream once, and handed over in as few
calls as its streams allow, with nothing kept per stream in the common case.

A read batch's streams that have no state in the sink (none running, none buffered, none held)
form a `Unit`: the batch waits for the unit as a whole, and all the sink keeps of its streams is
their names (``_in_calls``), so that a later batch with one of them does not run it beside the
unit's call. A stream that has state (its call still runs, it waits for a retry in place, it
is rejoining after a replay) goes the per-stream way of `StreamsSink`: its span is buffered and
joins a later call in order. A held stream's events are dropped, as in `StreamsSink`.

Each call takes, oldest first, whole units and ready streams up to ``max_streams`` streams, and
at most ``max_calls`` calls run at once. A unit's stream whose outcome is anything but "all
handled" (a partial result, a skip, a failure), or that met new events while its unit waited,
is settled the per-stream way: it gets state, its unit's batch waits on it too, and the rest of
the unit completes as usual.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Collection, KeysView, Sequence

import anyio
import anyio.lowlevel

from projector.model.events import Event
from projector.model.failures import HandlerTimeout
from projector.pipeline.calls import Batches, Call, FailureHandler, Unit, stop_on_failure
from projector.pipeline.lane import Batch
from projector.pipeline.observe import NO_OBSERVER, Observer
from projector.pipeline.sink import DEFAULT_STALL_DELAY, StreamsSink
from projector.pipeline.streams import (
    IDLE,
    QUEUED,
    RUNNING,
    StreamState,
    TroubledStream,
    by_stream,
)

Outcomes = dict[str, "int | Exception"]


def _among(names: KeysView[str], *collections: Collection[str]) -> set[str]:
    """The ``names`` found in any of ``collections``: set operations, which cost far less than
    a look per name, and none at all for an empty collection."""
    found: set[str] = set()
    for collection in collections:
        if collection:
            found |= names & collection
    return found


async def _no_span_calls(stream_name: str, events: list[Event]) -> int:
    raise AssertionError("a batch handler's sink makes no span calls")


class BatchesSink(StreamsSink):
    """Runs a batch handler on ``batches.max_calls`` workers; use as ``async with``."""

    def __init__(
        self,
        batches: Batches,
        *,
        max_read_ahead: int,
        stall_delay: float = DEFAULT_STALL_DELAY,
        on_failure: FailureHandler = stop_on_failure,
        handler_timeout: float | None = None,
        held: frozenset[str] = frozenset(),
        observer: Observer = NO_OBSERVER,
    ) -> None:
        if batches.max_streams < 1 or batches.max_calls < 1 or batches.linger < 0:
            raise ValueError("max_streams and max_calls must be at least 1, linger 0 or more")
        super().__init__(
            _no_span_calls,
            max_concurrent_streams=batches.max_calls,
            max_read_ahead=max_read_ahead,
            stall_delay=stall_delay,
            on_failure=on_failure,
            handler_timeout=handler_timeout,
            held=held,
            observer=observer,
        )
        self._batches = batches
        self._units: deque[Unit] = deque()  # waiting for a call, oldest first
        self._in_calls: dict[str, Unit] = {}  # the stateless streams of every unit not settled
        self._queued = 0  # streams in the units waiting

    # -- observation ------------------------------------------------------------------------

    @property
    def tracked_streams(self) -> int:
        return super().tracked_streams + len(self._in_calls)

    def handled_in_flight(self) -> dict[str, int]:
        handled = super().handled_in_flight()
        for unit in {id(unit): unit for unit in self._in_calls.values()}.values():
            name = unit.batch.lane.name
            events = sum(len(span) for span in unit.spans.values())
            handled[name] = max(handled.get(name, 0) - events, 0)
        return handled

    def troubled(self, *, longer_than: float) -> list[TroubledStream]:
        found, now = super().troubled(longer_than=longer_than), time.monotonic()
        for call in self._calls:
            if call.units and now - call.started > longer_than:
                found.extend(
                    TroubledStream(name, "running", now - call.started, 0)
                    for unit in call.units
                    for name in unit.spans
                )
        return found

    def _calling(self, stream_name: str) -> bool:
        # A stream in a unit waiting for a call is given to that call, held or not.
        return stream_name in self._in_calls or super()._calling(stream_name)

    # -- scheduling -------------------------------------------------------------------------

    def _schedule(self, batch: Batch, events: Sequence[Event]) -> None:
        fresh = by_stream(events)
        streams, held, hints, in_calls = self._streams, self._held, self._skip_hints, self._in_calls
        # The streams that have state, or are held: in a catch-up few or none.
        special = _among(fresh.keys(), streams.keys(), held, in_calls.keys(), hints.keys())
        waiting = 0
        for name in [name for name in fresh if name in special] if special else ():
            span = fresh.pop(name)
            if name in held:
                continue
            stream = streams.get(name)
            if stream is None:
                stream = streams[name] = StreamState(name)
                if name in in_calls:
                    # Its unit has yet to settle it: buffer, and run nothing until it has.
                    stream.phase, stream.running_since = RUNNING, time.monotonic()
                else:
                    stream.next_position = hints.pop(name)
            waiting += self._buffer(batch, stream, span)
        if fresh:
            waiting += self._add_units(batch, fresh)
        batch.remaining += waiting
        if waiting:
            self._work_ready.set()

    def _add_units(self, batch: Batch, fresh: dict[str, list[Event]]) -> int:
        """Queue ``fresh`` as units of at most ``max_streams`` streams; how many."""
        size, names = self._batches.max_streams, list(fresh)
        parts = (
            [fresh]
            if len(names) <= size
            else [
                {name: fresh[name] for name in names[i : i + size]}
                for i in range(0, len(names), size)
            ]
        )
        for spans in parts:
            unit = Unit(batch, spans)
            for name in spans:
                self._in_calls[name] = unit
            self._units.append(unit)
        self._queued += len(fresh)
        return len(parts)

    # -- calls ------------------------------------------------------------------------------

    async def _serve(self, call: Call) -> None:
        batches, ready, units = self._batches, self._ready, self._units
        while not (self._stopping or call.scope.cancel_called):
            if not (ready or units):
                await self._wait_for_work()
                continue
            if batches.linger:
                with anyio.move_on_after(batches.linger):
                    while self._queued + len(ready) < batches.max_streams and not self._stopping:
                        await self._wait_for_work()
            taken, size = [], 0
            while units and size + len(units[0].spans) <= batches.max_streams:
                unit = units.popleft()
                taken.append(unit)
                size += len(unit.spans)
            self._queued -= size
            streams = self._take_ready(batches.max_streams - size)
            if taken or streams:
                await self._run_call(call, taken, streams)
            # A handler that never waits would otherwise starve every other task, and a call
            # costs far more than a turn of the loop.
            await anyio.lowlevel.checkpoint()

    def _take_ready(self, limit: int) -> list[StreamState]:
        """Up to ``limit`` streams from the ready queue, oldest first, that have events."""
        ready, taken = self._ready, list[StreamState]()
        while ready and len(taken) < limit:
            stream = ready.popleft()
            if stream.phase is not QUEUED:
                continue  # held while it waited in the queue
            if stream.buffer:
                taken.append(stream)
            else:
                stream.phase = IDLE
        return taken

    async def _run_call(self, call: Call, units: list[Unit], streams: list[StreamState]) -> None:
        started = time.monotonic()
        spans: dict[str, list[Event]] = {}
        for unit in units:
            spans.update(unit.spans)
        for stream in streams:
            spans[stream.name], stream.buffer = stream.buffer, []
            stream.phase, stream.running_since = RUNNING, started
        call.started, call.units = started, units
        call.batch = [(stream, spans[stream.name]) for stream in streams]
        self._busy += len(spans)
        try:
            outcomes = await self._batches.handle(spans)
        except Exception as exc:
            outcomes = dict.fromkeys(spans, exc)
        # Cancelled (a timeout, or the end), the call stays set for `_timed_out` to settle.
        units, batch = call.units, call.batch
        call.units, call.batch = [], []  # no timeout may cut the settling short
        await self._settle_call(units, batch, outcomes, time.monotonic() - started)

    async def _timed_out(self, call: Call) -> None:
        units, batch = call.units, call.batch
        call.units, call.batch = [], []
        error = HandlerTimeout(
            f"the call took longer than handler_timeout ({self._handler_timeout} s)"
        )
        names = [name for unit in units for name in unit.spans] + [s.name for s, _ in batch]
        await self._settle_call(
            units, batch, dict.fromkeys(names, error), time.monotonic() - call.started
        )

    async def _settle_call(
        self,
        units: list[Unit],
        batch: list[tuple[StreamState, list[Event]]],
        outcomes: Outcomes,
        elapsed: float,
    ) -> None:
        """Settle every stream of a call by its outcome: successes first, with no wait in
        between; then the failures, each decided in turn, a stream kept out of the ready queue
        (RUNNING) until it is settled."""
        failed: list[tuple[StreamState, list[Event], Exception]] = []
        for unit in units:
            self._settle_unit(unit, outcomes, elapsed, failed)
        for stream, events in batch:
            outcome = self._outcome(outcomes, stream.name, events, elapsed)
            self._settle_stream(stream, events, outcome, failed)
        for index, (stream, events, error) in enumerate(failed):
            self._idle_again(stream)
            try:
                await self._failed(stream, events, error)
            except BaseException:
                for rest, _, _ in failed[index + 1 :]:
                    self._idle_again(rest)  # the run stops: `stop` must not wait for them
                raise

    def _outcome(
        self, outcomes: Outcomes, name: str, events: list[Event], elapsed: float
    ) -> int | Exception:
        outcome = outcomes.get(name)
        if outcome is None:
            outcome = events[-1].position + 1  # left out: it handled all of them
        if self._call_hook is not None:
            error = outcome if isinstance(outcome, Exception) else None
            self._call_hook(name, len(events), elapsed, error)
        return outcome

    def _settle_unit(
        self,
        unit: Unit,
        outcomes: Outcomes,
        elapsed: float,
        failed: list[tuple[StreamState, list[Event], Exception]],
    ) -> None:
        """Settle a unit's streams in place where they can be (handled whole, and no state of
        their own since: the hot path of a catch-up, kept flat); the others the per-stream way,
        with the unit's batch waiting on them too. Then the unit's batch is done with it."""
        in_calls, streams, held, hook = self._in_calls, self._streams, self._held, self._call_hook
        spans = unit.spans
        # Each of the unit's streams is in `_in_calls`, for this unit alone (a stream goes to a
        # unit only when it is in none): when the counts agree, there is nothing else there.
        if len(in_calls) == len(spans):
            in_calls.clear()
        else:
            for name in spans:
                del in_calls[name]
        special = _among(spans.keys(), outcomes.keys(), held, streams.keys())
        if not special:
            # Every stream handled all of its span and has no state of its own.
            if hook is not None:
                for name, events in spans.items():
                    hook(name, len(events), elapsed, None)
            self._unit_done(unit, sum(map(len, spans.values())), len(spans))
            return
        handled = in_place = 0
        for name, events in spans.items():
            outcome: int | Exception | None = outcomes.get(name)
            if hook is not None:
                outcome = self._outcome(outcomes, name, events, elapsed)
            if name in held:
                in_place += 1  # held meanwhile: what it left is dropped
                continue
            stream = streams.get(name)
            if stream is None and (outcome is None or outcome == events[-1].position + 1):
                in_place += 1
                handled += len(events)
                continue
            if outcome is None:
                outcome = events[-1].position + 1
            if stream is None:
                stream = streams[name] = StreamState(name)
            stream.phase = RUNNING
            stream.pending.insert(0, (unit.batch, events[-1].position))
            unit.batch.remaining += 1
            self._settle_stream(stream, events, outcome, failed)
        self._unit_done(unit, handled, in_place)

    def _unit_done(self, unit: Unit, handled: int, in_place: int) -> None:
        """The unit's batch is done with it: ``in_place`` of its streams are settled, having
        handled ``handled`` events (the others went the per-stream way)."""
        self._handled += handled
        self._busy -= in_place
        if self._busy == 0 and self._stopping:
            self._idle.set()  # `stop` waits for it
        unit.batch.stream_done()

    def _settle_stream(
        self,
        stream: StreamState,
        events: list[Event],
        outcome: int | Exception,
        failed: list[tuple[StreamState, list[Event], Exception]],
    ) -> None:
        if isinstance(outcome, Exception):
            failed.append((stream, events, outcome))
            return
        self._idle_again(stream)
        self._succeeded(stream, events, outcome)
