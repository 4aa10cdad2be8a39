"""Each handler call is an OpenTelemetry span when an SDK is configured."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.projecting import Recorder, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    # The global provider can be set once per process: one for this module's tests.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


async def test_every_handler_call_is_a_span_naming_its_stream_and_positions(
    own_store_url: str,
) -> None:
    EXPORTER.clear()
    await write_events(own_store_url, {"account-1": 3, "account-2": 2})
    recorder = Recorder()

    await run_projection(
        recorder.projection(), settings_for(own_store_url, categories=("account",))
    )

    spans = [s for s in EXPORTER.get_finished_spans() if s.name == "projector.handle"]
    assert len(spans) == len(recorder.calls)
    by_stream: dict[object, int] = {}
    for span in spans:
        attributes = dict(span.attributes or {})
        by_stream.setdefault(attributes["projector.stream"], 0)
        by_stream[attributes["projector.stream"]] += int(str(attributes["projector.events"]))
        assert attributes["projector.category"] == "account"
        assert attributes["projector.group"] == "recorder"
    assert by_stream == {"account-1": 3, "account-2": 2}
