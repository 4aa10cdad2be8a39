"""What the sink calls and how: the handlers' types, a batch handler's limits, and the record
of the call a worker is running (for the timeout watchdog and the figures)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from projector.model.events import Event
from projector.model.failures import Decision, Stop
from projector.pipeline.lane import Batch
from projector.pipeline.streams import StreamState

SpanHandler = Callable[[str, list[Event]], Awaitable[int]]
"""Handles one stream's events (in stream order) and returns the stream position to expect next:
``events[-1].position + 1`` when all were handled, less when only some were, more to skip ahead."""

BatchHandler = Callable[[dict[str, list[Event]]], Awaitable[dict[str, "int | Exception"]]]
"""Handles several streams' spans in one call; for each stream that did not simply handle all
of its span, what a `SpanHandler` would return, or the exception its span failed with (a
stream left out handled all of it; the other streams' outcomes stand)."""


@dataclass(frozen=True, slots=True)
class Batches:
    """A batch handler and its limits: the spans of up to ``max_streams`` streams per call, at
    most ``max_calls`` calls at once; a call waits up to ``linger`` seconds for more streams
    to be ready when fewer than ``max_streams`` are (0: it takes what is ready)."""

    handle: BatchHandler
    max_streams: int
    max_calls: int
    linger: float = 0.0


FailureHandler = Callable[[str, list[Event], Exception, int], Awaitable[Decision]]
"""Decides what to do after a failed call: given the stream, the call's events, the error and the
number of failed calls in a row (1 for the first)."""


async def stop_on_failure(
    stream_name: str, events: list[Event], error: Exception, attempt: int
) -> Decision:
    return Stop(str(error))


class Unit:
    """Streams of one read batch that had no state in the sink, run together: the batch waits
    for the unit as a whole, and nothing is kept per stream but its name (see
    `projector.pipeline.batch_sink`)."""

    __slots__ = ("batch", "spans")

    def __init__(self, batch: Batch, spans: dict[str, list[Event]]) -> None:
        self.batch = batch
        self.spans = spans


class Call:
    """What one worker is running, for the timeout watchdog: one stream's call, or a batch
    call of several streams (with state of their own, or in units)."""

    __slots__ = ("batch", "events", "scope", "started", "stream", "units")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.stream: StreamState | None = None  # set while a stream's call runs
        self.events: list[Event] = []
        self.batch: list[tuple[StreamState, list[Event]]] = []  # while a batch call runs
        self.units: list[Unit] = []  # while a batch call runs
        self.started = 0.0

    @property
    def running(self) -> bool:
        return self.stream is not None or bool(self.batch) or bool(self.units)

    def spans(self) -> list[tuple[StreamState, list[Event]]]:
        """The streams with state of their own that it runs, with their events."""
        return [(self.stream, self.events)] if self.stream is not None else self.batch
