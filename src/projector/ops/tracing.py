"""Optional OpenTelemetry spans, one per handler call, when the OpenTelemetry API is installed.

Spans are made only when a tracer provider (an SDK) is configured before the run starts; each
call then shows up with its stream, category, event count and positions, and a failed call
carries its exception.
"""

from __future__ import annotations

from projector.model.events import Event, category
from projector.pipeline.sink import SpanHandler


def traced(handle: SpanHandler, *, group: str) -> SpanHandler:
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
