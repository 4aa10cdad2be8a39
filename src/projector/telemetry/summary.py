"""The periodic summary line: throughput, lag and streams, one INFO record every interval."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from projector.pipeline.sink import StreamsSink
from projector.telemetry.health import HeldStreamsView
from projector.telemetry.lag import LagReading

logger = logging.getLogger(__name__)


class Summary:
    """Logs the events handled since the last summary line (action ``summary``), with the lag
    in each category and the busy, retrying and parked streams."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._counted = 0  # the sink's handled events at the last line

    async def run(
        self,
        sink: StreamsSink,
        held: Callable[[], HeldStreamsView],
        measure: Callable[[], Awaitable[LagReading | None]],
        *,
        interval: float,
    ) -> None:
        """Log a summary every ``interval`` seconds, with the lag ``measure`` gives then (None:
        not known); cancel to stop."""
        since = anyio.current_time()
        while True:
            await anyio.sleep(interval)
            reading = await measure()
            now = anyio.current_time()
            self.log(sink, held(), reading, seconds=now - since)
            since = now

    def log(
        self,
        sink: StreamsSink,
        held: HeldStreamsView,
        reading: LagReading | None,
        *,
        seconds: float,
    ) -> None:
        """Log what happened in the last ``seconds``, and start counting again."""
        handled, self._counted = sink.handled_events - self._counted, sink.handled_events
        rate = handled / seconds if seconds > 0 else 0.0
        lag = (
            None if reading is None else {c.category: c.events for c in reading.categories.values()}
        )
        lag_seconds = (
            None
            if reading is None
            else {c.category: round(c.seconds, 3) for c in reading.categories.values()}
        )
        busy, retrying, parked = sink.busy_streams, held.retrying, held.parked
        logger.info(
            "%s: %.1f events/s, lag %s, %d busy, %d retrying and %d parked streams",
            self.group,
            rate,
            "unknown" if lag is None else ", ".join(f"{c} {n}" for c, n in lag.items()),
            busy,
            retrying,
            parked,
            extra={
                "action": "summary",
                "group": self.group,
                "events_per_second": round(rate, 1),
                "handled": handled,
                "lag": lag,
                "lag_seconds": lag_seconds,
                "busy_streams": busy,
                "retrying_streams": retrying,
                "parked_streams": parked,
            },
        )
