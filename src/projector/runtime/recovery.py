"""A runner's care for failing streams: logging retries, parking, replaying, reporting stuck ones.

The sink decides nothing itself about a failed call; `Recovery.on_failure` does, with the retry
policy, and records a parked stream before the sink lets its checkpoint move on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio

from projector.errors import DatabaseUnavailableError
from projector.model.events import Event
from projector.model.failures import RECONNECT, Decision, Park, Retry, RetryPolicy, RetryWhen
from projector.pipeline.sink import SpanHandler, StreamsSink
from projector.runtime.outage import Outage, is_connection_error
from projector.storage.message_store import MessageStore
from projector.storage.parked import ParkedStream, ParkedStreams

logger = logging.getLogger(__name__)

RETRY_POLL = 2.0  # seconds between looks for `projector parked retry` requests
STUCK_REPORT_EVERY = 60.0  # seconds between reports of the same stuck stream


@dataclass
class _Progress:
    position: int  # the first stream position not yet handled


class Recovery:
    """Failure decisions and parked-stream replays for one runner."""

    def __init__(
        self,
        policy: RetryPolicy,
        parked: ParkedStreams,
        store: MessageStore,
        handle: SpanHandler,
        outage: Outage,
        *,
        group: str,
        batch_size: int,
        handler_timeout: float | None,
    ) -> None:
        self.policy = policy
        self._parked = parked
        self._store = store
        self._handle = handle
        self._outage = outage
        self._group = group
        self._batch_size = batch_size
        self._handler_timeout = handler_timeout

    async def on_failure(
        self, stream_name: str, events: list[Event], error: Exception, attempt: int
    ) -> Decision:
        fields = {
            "group": self._group,
            "stream": stream_name,
            "position": events[0].position,
            "global_position": events[0].global_position,
            "attempt": attempt,
            "error": f"{type(error).__name__}: {error}",
        }
        if is_connection_error(error):
            return await self._connection_lost(stream_name, error, attempt, fields)
        decision = self.policy.decide(error, attempt)
        if isinstance(decision, Retry):
            self._log_retry(stream_name, attempt, decision, error, fields)
        elif isinstance(decision, Park):
            return await self._park(stream_name, events, error, attempt, decision, fields)
        return decision

    async def _connection_lost(
        self, stream_name: str, error: Exception, attempt: int, fields: dict[str, object]
    ) -> Decision:
        """Never the event's fault, so never parked (see `_wait_or_retry_soon`)."""
        decision = await self._wait_or_retry_soon(attempt)
        if isinstance(decision, Retry):
            self._log_retry(stream_name, attempt, decision, error, fields)
        else:
            logger.debug(
                "%s waits for the database: %r",
                stream_name,
                error,
                extra={"action": "stream_waiting_for_database", **fields},
            )
        return decision

    async def _wait_or_retry_soon(self, attempt: int) -> Retry | RetryWhen:
        """After a lost connection: wait for the database while it is away (see `outage`),
        else retry within seconds (the handler's own connection broke, or a service it calls
        is away)."""
        if await self._outage.confirm():
            return RetryWhen(self._outage.wait_until_back)
        return Retry(RECONNECT.backoff(attempt))

    def _log_retry(
        self,
        stream_name: str,
        attempt: int,
        decision: Retry,
        error: Exception,
        fields: dict[str, object],
    ) -> None:
        logger.warning(
            "%s failed (attempt %d), retrying in %.2f s: %r",
            stream_name,
            attempt,
            decision.delay,
            error,
            extra={"action": "stream_retry_scheduled", "delay": decision.delay, **fields},
        )

    async def _park(
        self,
        stream_name: str,
        events: list[Event],
        error: Exception,
        attempt: int,
        decision: Park,
        fields: dict[str, object],
    ) -> Decision:
        try:
            await self._parked.park(stream_name, events, error, attempt)
        except DatabaseUnavailableError as exc:
            # Parking needs the database: the stream is tried once more when it is back.
            logger.warning(
                "%s could not be parked, retrying it instead: %s",
                stream_name,
                exc,
                extra={"action": "stream_retry_scheduled", **fields},
            )
            return await self._wait_or_retry_soon(attempt)
        logger.error(
            "%s parked at position %d: %s (`projector parked retry` replays it)",
            stream_name,
            events[0].position,
            decision.reason,
            exc_info=error,
            extra={"action": "stream_parked", **fields},
        )
        return decision

    async def serve_retries(self, sink: StreamsSink) -> None:
        """Replay parked streams whose retry was requested; cancel to stop."""
        while True:
            await anyio.sleep(RETRY_POLL)
            try:
                for parked in await self._parked.retry_requests():
                    await self.replay(parked, sink)
            except DatabaseUnavailableError as exc:
                logger.warning(
                    "parked stream retries wait for the database: %s",
                    exc,
                    extra={"action": "reconnecting", "doing": "serving parked retries"},
                )

    async def replay(self, parked: ParkedStream, sink: StreamsSink) -> None:
        """Replay one parked stream from its first unhandled event, then let it run again."""
        name = parked.stream_name
        if name not in sink.parked_streams:
            # The sink already runs it (an earlier replay whose unpark failed): only the row is
            # left to remove. Replaying now would call the handler beside the sink's own call.
            await self._parked.unpark(parked)
            return
        sink.hold(name)  # keep what the source reads meanwhile; the replay reads the rest
        progress = _Progress(parked.position)
        try:
            await self._replay_from(name, progress)
        except Exception as error:
            sink.park(name)  # back to dropping its events; the parked row still holds its place
            if isinstance(error, DatabaseUnavailableError):
                raise  # the retry request stays, and is served when the database is back
            await self._park_again(name, progress.position, error)
            return
        sink.resume(name, progress.position)
        await self._parked.unpark(parked)
        logger.info(
            "%s replayed up to position %d and running again",
            name,
            progress.position - 1,
            extra={
                "action": "stream_unparked",
                "group": self._group,
                "stream": name,
                "position": progress.position,
            },
        )

    async def _replay_from(self, stream_name: str, progress: _Progress) -> None:
        """Handle the stream's events from ``progress.position`` on, moving it as calls succeed
        (so that a failure records the first event still unhandled)."""
        while events := await self._store.read_stream(
            stream_name, progress.position, self._batch_size
        ):
            with anyio.fail_after(self._handler_timeout):
                next_position = await self._handle(stream_name, events)
            if next_position <= progress.position:
                raise RuntimeError("the handler handled none of the replayed events")
            progress.position = next_position

    async def _park_again(self, name: str, position: int, error: Exception) -> None:
        await self._parked.park(name, await self._store.read_stream(name, position, 1), error, 1)
        logger.error(
            "%s failed again when replayed at position %d: %r",
            name,
            position,
            error,
            exc_info=error,
            extra={
                "action": "stream_parked",
                "group": self._group,
                "stream": name,
                "position": position,
            },
        )

    async def report_stuck(self, sink: StreamsSink, *, stuck_after: float) -> None:
        """Log streams running or failing for longer than ``stuck_after``: once, then every
        ``STUCK_REPORT_EVERY`` seconds while they stay stuck."""
        reported: dict[str, float] = {}
        while True:
            await anyio.sleep(min(stuck_after, STUCK_REPORT_EVERY) / 2)
            now = anyio.current_time()
            troubled = sink.troubled(longer_than=stuck_after)
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
                        "group": self._group,
                        "stream": stream.stream_name,
                        "state": stream.state,
                        "seconds": round(stream.seconds, 1),
                        "failures": stream.failures,
                    },
                )
            names = {stream.stream_name for stream in troubled}
            for name in [n for n in reported if n not in names]:
                del reported[name]
