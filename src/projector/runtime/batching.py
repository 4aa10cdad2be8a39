"""Batch handlers as the sink calls them: one call for the spans of several streams, with each
stream's own outcome (see `projector.pipeline.sink.Batches`).

The sink groups what it reads by stream once and hands a batch handler the spans of the streams
that are ready together, up to ``batch_max_streams`` of them; what makes a batch call fail is
settled here:

- A batch call that raises is split in halves and each half run again, down to single streams,
  so the others commit (or, at least once, are handled) and only a failing stream fails, to be
  held and retried on its own (for one poison stream among n, about 2 log2 n calls).
- Errors that are nobody's stream's fault (a lost connection, `RetryAfter`) go to every stream
  of the call instead: splitting would only repeat them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from projector.model.events import Event
from projector.model.failures import RetryAfter
from projector.model.projection import Spans
from projector.pipeline.calls import BatchHandler, SpanHandler
from projector.runtime.outage import is_connection_error

logger = logging.getLogger(__name__)

BatchRun = Callable[[Spans], Awaitable[dict[str, int]]]
"""Runs one batch call: each stream's span in; out, the next position of each stream that did
not handle all of its span (a stream left out did)."""


def split_on_failure(run: BatchRun, *, group: str) -> BatchHandler:
    """``run`` as the sink's batch handler: a failing call is split down to the failing
    streams, whose outcome is their error."""

    async def handle(spans: Spans) -> dict[str, int | Exception]:
        try:
            return dict(await run(spans))
        except Exception as exc:
            if len(spans) == 1 or _nobody_s_fault(exc):
                return dict.fromkeys(spans, exc)
            _log_split(group, len(spans), exc)
        outcomes: dict[str, int | Exception] = {}
        await _in_halves(run, list(spans), spans, outcomes)
        return outcomes

    return handle


async def _in_halves(
    run: BatchRun, names: list[str], spans: Spans, outcomes: dict[str, int | Exception]
) -> None:
    """Run each half of ``names`` (the whole call failed), halving again what fails."""
    half = len(names) // 2
    for part in (names[:half], names[half:]):
        try:
            outcomes.update(await run({name: spans[name] for name in part}))
        except Exception as exc:
            if len(part) == 1 or _nobody_s_fault(exc):
                outcomes.update(dict.fromkeys(part, exc))
            else:
                await _in_halves(run, part, spans, outcomes)


def one_stream(handle: BatchHandler) -> SpanHandler:
    """A batch handler called with one stream's span at a time (a held stream's replay)."""

    async def handle_span(stream_name: str, events: list[Event]) -> int:
        outcome = (await handle({stream_name: events})).get(stream_name)
        if isinstance(outcome, Exception):
            raise outcome
        return events[-1].position + 1 if outcome is None else outcome

    return handle_span


def _nobody_s_fault(error: Exception) -> bool:
    """Whether the error says nothing of any one stream, so splitting would only repeat it."""
    return isinstance(error, RetryAfter) or is_connection_error(error)


def _log_split(group: str, streams: int, error: Exception) -> None:
    logger.info(
        "a batch call of %d streams failed, trying them again in halves: %r",
        streams,
        error,
        extra={
            "action": "batch_split",
            "group": group,
            "streams": streams,
            "error": f"{type(error).__name__}: {error}",
        },
    )
