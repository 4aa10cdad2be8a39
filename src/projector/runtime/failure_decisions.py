"""What a failed handler call becomes: the decision a runner takes for it, with its retry policy.

The sink decides nothing itself about a failed call; `FailureDecisions.on_failure` does:

- A lost connection is nobody's stream's fault: the stream waits in the sink (its batches, and
  the checkpoint, with it) until the database is back, or retries within seconds (`outage`).
- Under the ``stop`` policy the stream retries in the sink, its batches waiting, until its
  attempts run out and the run stops: nothing may pass a failing event, as the user asked.
- Otherwise the stream is recorded as held (`projector.storage.held`: retrying, or parked once
  its attempts are used up) and only then taken out of the read path, so its batches complete
  without it and the checkpoint moves on; its events are dropped as read, and
  `projector.runtime.replays` replays it from the stream itself when its next attempt is due.
"""

from __future__ import annotations

import logging

import anyio

from projector.errors import DatabaseUnavailableError, HandlerError
from projector.model.events import Event
from projector.model.failures import (
    RECONNECT,
    Decision,
    Hold,
    OnExhausted,
    Park,
    Retry,
    RetryPolicy,
    RetryWhen,
    Stop,
)
from projector.runtime.outage import Outage, is_connection_error
from projector.storage.held import HeldStream, HeldStreams

logger = logging.getLogger(__name__)


class FailureDecisions:
    """Decides, and records, what each failed call of a runner's streams becomes."""

    def __init__(
        self, policy: RetryPolicy, held: HeldStreams, outage: Outage, *, group: str
    ) -> None:
        self.policy = policy
        self._held = held
        self._outage = outage
        self._group = group
        # Set when a stream is held: its attempt may be due before the replays' next look.
        self.changed = anyio.Event()

    def rearm(self) -> anyio.Event:
        """A fresh `changed` event, set at the next hold (the replays wait on it)."""
        self.changed = anyio.Event()
        return self.changed

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
        verdict = self.policy.decide(error, attempt)
        if isinstance(verdict, Stop):
            return verdict
        if isinstance(verdict, Retry) and self.policy.on_exhausted is OnExhausted.STOP:
            self._log_retry(stream_name, attempt, verdict.delay, error, fields)
            return verdict
        return await self._hold(stream_name, events[0], error, attempt, verdict, fields)

    async def _connection_lost(
        self, stream_name: str, error: Exception, attempt: int, fields: dict[str, object]
    ) -> Decision:
        """Never the event's fault, so never held (see `_wait_or_retry_soon`)."""
        decision = await self._wait_or_retry_soon(attempt)
        if isinstance(decision, Retry):
            self._log_retry(stream_name, attempt, decision.delay, error, fields)
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

    async def _hold(
        self,
        stream_name: str,
        first: Event,
        error: Exception,
        attempt: int,
        verdict: Retry | Park,
        fields: dict[str, object],
    ) -> Decision:
        """Record the stream as held, then take it out of the read path."""
        retry_in = verdict.delay if isinstance(verdict, Retry) else None
        try:
            await self._held.hold(stream_name, first, error, attempts=attempt, retry_in=retry_in)
        except DatabaseUnavailableError as exc:
            # Holding needs the database: the stream waits in place until it is back.
            logger.warning(
                "%s could not be held, retrying it in place instead: %s",
                stream_name,
                exc,
                extra={"action": "stream_retry_scheduled", **fields},
            )
            return await self._wait_or_retry_soon(attempt)
        self.changed.set()
        if isinstance(verdict, Retry):
            self._log_retry(stream_name, attempt, verdict.delay, error, fields)
        else:
            self._log_parked(stream_name, first.position, verdict.reason, error, fields)
        return Hold(f"held at position {first.position}")

    def _log_retry(
        self,
        stream_name: str,
        attempt: int,
        delay: float,
        error: Exception,
        fields: dict[str, object],
    ) -> None:
        logger.warning(
            "%s failed (attempt %d), retrying in %.2f s: %r",
            stream_name,
            attempt,
            delay,
            error,
            extra={"action": "stream_retry_scheduled", "delay": delay, **fields},
        )

    def _log_parked(
        self,
        stream_name: str,
        position: int,
        reason: str,
        error: Exception,
        fields: dict[str, object],
    ) -> None:
        logger.error(
            "%s parked at position %d: %s (`projector failing retry` replays it)",
            stream_name,
            position,
            reason,
            exc_info=error,
            extra={"action": "stream_parked", **fields},
        )

    async def failed_again(
        self, held: HeldStream, first: Event | None, error: Exception
    ) -> None:
        """A replay of ``held`` failed at ``first`` (None: reading the stream failed, not the
        handler): hold it again with one more attempt, park it, or stop the run."""
        if first is None:
            raise error  # projector's own failure
        attempt = held.attempts + 1
        verdict = self.policy.decide(error, attempt)
        if isinstance(verdict, Stop):
            raise HandlerError(
                f"handler failed on stream {held.stream_name!r} at position {first.position} "
                f"(global {first.global_position}) when replayed: {error!r}; {verdict.reason}"
            ) from error
        fields = {
            "group": self._group,
            "stream": held.stream_name,
            "position": first.position,
            "global_position": first.global_position,
            "attempt": attempt,
            "error": f"{type(error).__name__}: {error}",
        }
        await self._hold(held.stream_name, first, error, attempt, verdict, fields)
