"""Riding out an outage: an operation retried with backoff while the database is unavailable
(it raised DatabaseUnavailableError), for up to ``outage_limit`` seconds.

Every layer that talks to the database through something else uses it (the source through its
reader, storage's notification listener, the runner's start), so it knows nothing of the
driver: storage turns the driver's errors into DatabaseUnavailableError first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from projector.errors import DatabaseUnavailableError
from projector.model.failures import RECONNECT, RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECONNECT_LOG_EVERY = 10.0  # seconds between logged attempts of one operation in an outage


class Reconnecting:
    """The retries of one operation through an outage: backoff between attempts, the outage's
    ``limit`` (measured from the first failure since the last success), and the logs (action
    ``reconnecting`` for each attempt, ``reconnected`` once it works again)."""

    def __init__(
        self,
        doing: str,
        *,
        limit: float,
        on_retry: Callable[[str], None] | None = None,
        policy: RetryPolicy = RECONNECT,
        limit_setting: str = "outage_limit",
        pause: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        """``limit_setting``: the setting ``limit`` comes from, for the error past it;
        ``pause(delay)`` waits before the next attempt (it may end sooner: when something that
        watches the database finds it back)."""
        self._doing = doing
        self._limit = limit
        self._limit_setting = limit_setting
        self._pause = pause
        self._on_retry = on_retry
        self._policy = policy
        self._started: float | None = None
        self._attempt = 0
        self._logged_at: float | None = None

    async def failed(self, exc: Exception) -> None:
        """Wait before the next attempt; raise DatabaseUnavailableError past the limit."""
        doing, limit = self._doing, self._limit
        now = anyio.current_time()
        self._started = now if self._started is None else self._started
        if now - self._started >= limit:  # a limit of 0: no retry at all
            raise DatabaseUnavailableError(
                f"the database stayed unavailable for more than {limit:g} s while {doing} "
                f"({self._limit_setting}): {exc}"
            ) from exc
        self._attempt += 1
        delay = self._policy.backoff(self._attempt)
        if self._on_retry is not None:
            self._on_retry(doing)
        # The first attempt, then one line every RECONNECT_LOG_EVERY s: an outage of minutes
        # is a few lines, not one per attempt of every loop.
        quiet = self._logged_at is not None and now - self._logged_at < RECONNECT_LOG_EVERY
        if not quiet:
            self._logged_at = now
        logger.log(
            logging.DEBUG if quiet else logging.WARNING,
            "database unavailable while %s (attempt %d), retrying in %.1f s: %s",
            doing,
            self._attempt,
            delay,
            exc,
            extra={
                "action": "reconnecting",
                "doing": doing,
                "attempt": self._attempt,
                "delay": round(delay, 3),
            },
        )
        await self._pause(delay)

    def succeeded(self) -> None:
        """The operation reached the database again: the outage, if any, is over."""
        if self._attempt:
            logger.info(
                "database reachable again while %s after %d attempt(s)",
                self._doing,
                self._attempt,
                extra={"action": "reconnected", "doing": self._doing, "attempts": self._attempt},
            )
        self._started, self._attempt, self._logged_at = None, 0, None


async def outlasting(
    operation: Callable[[], Awaitable[T]],
    *,
    doing: str,
    limit: float,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``operation``, retrying it with backoff while the database is unavailable, for up to
    ``limit`` seconds of outage (see `Reconnecting`)."""
    retries = Reconnecting(doing, limit=limit, on_retry=on_retry)
    while True:
        try:
            result = await operation()
        except DatabaseUnavailableError as exc:
            await retries.failed(exc)
            continue
        retries.succeeded()
        return result
