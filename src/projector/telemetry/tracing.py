"""Optional OpenTelemetry spans, one per handler call, when the OpenTelemetry API is installed.

Spans are made only when a tracer provider (an SDK) is configured before the run starts; each
call then shows up with its stream, category, event count and positions (a batch call with its
streams and events), and a failed call carries its exception.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from projector.model.events import Event, category
from projector.pipeline.calls import Batches, BatchHandler, SpanHandler

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer


def traced(handle: SpanHandler | Batches, *, group: str) -> SpanHandler | Batches:
    """``handle`` inside a span per call, or ``handle`` itself without OpenTelemetry."""
    try:
        from opentelemetry import trace
    except ImportError:
        return handle
    # The API's default provider makes no-op spans that still cost microseconds per call:
    # trace only when the application configured a real provider before the run started.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return handle
    tracer = trace.get_tracer("projector")
    if isinstance(handle, Batches):
        return dataclasses.replace(handle, handle=_batch_in_span(handle.handle, tracer, group))
    return _span_in_span(handle, tracer, group)


def _batch_in_span(handle: BatchHandler, tracer: Tracer, group: str) -> BatchHandler:
    async def handle_in_span(spans: dict[str, list[Event]]) -> dict[str, int | Exception]:
        attributes: dict[str, str | int] = {
            "projector.group": group,
            "projector.streams": len(spans),
            "projector.events": sum(len(events) for events in spans.values()),
        }
        with tracer.start_as_current_span("projector.handle_batch", attributes=attributes):
            return await handle(spans)

    return handle_in_span


def _span_in_span(handle: SpanHandler, tracer: Tracer, group: str) -> SpanHandler:

    async def handle_in_span(stream_name: str, events: list[Event]) -> int:
        attributes: dict[str, str | int] = {
            "projector.group": group,
            "projector.stream": stream_name,
            "projector.category": category(stream_name),
            "projector.events": len(events),
            "projector.first_position": events[0].position,
            "projector.last_position": events[-1].position,
            "projector.first_global_position": events[0].global_position,
        }
        with tracer.start_as_current_span("projector.handle", attributes=attributes):
            return await handle(stream_name, events)

    return handle_in_span
