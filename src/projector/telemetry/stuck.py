"""Streams stuck in a runner: running or failing for longer than ``stuck_after``, logged once,
then every ``STUCK_REPORT_EVERY`` seconds while they stay stuck (`stream_stuck`)."""

from __future__ import annotations

import logging

import anyio

from projector.pipeline.sink import StreamsSink
from projector.runtime.replays import Replays

logger = logging.getLogger(__name__)

STUCK_REPORT_EVERY = 60.0  # seconds between reports of the same stuck stream


async def report_stuck(
    sink: StreamsSink, replays: Replays, *, group: str, stuck_after: float
) -> None:
    """Log streams running or failing for longer than ``stuck_after``: once, then every
    ``STUCK_REPORT_EVERY`` seconds while they stay stuck."""
    reported: dict[str, float] = {}
    while True:
        await anyio.sleep(min(stuck_after, STUCK_REPORT_EVERY) / 2)
        now = anyio.current_time()
        troubled = sink.troubled(longer_than=stuck_after)
        troubled += replays.troubled(longer_than=stuck_after)
        for stream in troubled:
            if now - reported.get(stream.stream_name, -STUCK_REPORT_EVERY) < STUCK_REPORT_EVERY:
                continue
            reported[stream.stream_name] = now
            logger.warning(
                "%s stuck: %s for %.0f s (%d failed calls in a row)",
                stream.stream_name,
                stream.state,
                stream.seconds,
                stream.failures,
                extra={
                    "action": "stream_stuck",
                    "group": group,
                    "stream": stream.stream_name,
                    "state": stream.state,
                    "seconds": round(stream.seconds, 1),
                    "failures": stream.failures,
                },
            )
        names = {stream.stream_name for stream in troubled}
        for name in [n for n in reported if n not in names]:
            del reported[name]
