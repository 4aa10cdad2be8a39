"""Outages of projector's database, as failing handler calls see them.

A call that fails because a connection broke or could not be had says nothing about its events.
When projector's own database is the one away, every stream fails at once, and counting those
failures as attempts would grow every stream's backoff towards ``retry_cap`` (so that streams
wait out long delays after the database is back) and end with healthy streams parked. Instead,
the first such failure probes the database with a connection of its own; if it does not
answer, an outage starts (logged ``outage_started``), the failing streams wait for its end
without losing an attempt, and a probe every ``PROBE_INTERVAL`` seconds ends it (logged
``outage_ended``), waking them all at once. A connection error while the database answers (the
handler's own connection went stale across a restart, or a service it calls is away) is
retried soon, with short backoff, and never parks the stream: it is not the event's fault.

A runner starting over after an outage (its lock's session ended with the server) waits in
the same way (`retry_after`), and the probe that ends an outage also has the connection pool
reconnect at once (``on_back``): the pool's own backoff would otherwise keep every caller
waiting for seconds after the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from projector.errors import DatabaseUnavailableError
from projector.pipeline.observe import NO_OBSERVER, Observer
from projector.storage.database import is_connection_error

__all__ = ["Outage", "Probe", "is_connection_error"]

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 0.5  # seconds between probes while the database is away
PROBE_TIMEOUT = 2.0  # seconds a probe may take before the database counts as away
ANSWER_FRESH = 1.0  # seconds a probe's "it answers" is trusted without probing again

Probe = Callable[[], Awaitable[None]]
"""Raises DatabaseUnavailableError unless a new connection to the database answers."""


class Outage:
    """Whether projector's database is away now, and a way to wait for it to be back.

    Run `probe_while_away` in a task for as long as streams may wait on it.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        limit: float,
        probe_interval: float = PROBE_INTERVAL,
        observer: Observer = NO_OBSERVER,
        on_back: Callable[[], None] | None = None,
    ) -> None:
        """``on_back`` is called as each outage ends, before the waiting calls resume."""
        self._probe = probe
        self._limit = limit
        self._probe_interval = probe_interval
        self._observer = observer
        self._on_back = on_back
        self._started: float | None = None  # anyio time the current outage was found
        self._back = anyio.Event()
        self._began = anyio.Event()
        self._answered_at = -ANSWER_FRESH  # when a probe last found the database answering
        self._probing: anyio.Event | None = None  # set when the probe in flight ends

    @property
    def ongoing(self) -> bool:
        return self._started is not None

    async def confirm(self) -> bool:
        """Whether the database is away: known already, or found by a probe now (shared by
        the calls that ask at the same time; an answer is trusted for ANSWER_FRESH s)."""
        if self._started is not None:
            return True
        if anyio.current_time() - self._answered_at < ANSWER_FRESH:
            return False
        if self._probing is not None:
            await self._probing.wait()
            return self._started is not None
        self._probing = anyio.Event()
        try:
            if await self._answers():
                self._answered_at = anyio.current_time()
            else:
                self._begin()
        finally:
            self._probing.set()
            self._probing = None
        return self._started is not None

    async def wait_until_back(self) -> None:
        """Return once the outage (if any) has ended."""
        if self._started is not None:
            await self._back.wait()

    async def retry_after(self, delay: float) -> None:
        """Wait before trying again an operation that lost the database: while the database is
        away, until a probe finds it back (`probe_while_away` must run); while it answers (the
        failure was not its absence), ``delay`` seconds, the operation's own backoff."""
        if await self.confirm():
            await self.wait_until_back()
        else:
            await anyio.sleep(delay)

    async def probe_while_away(self) -> None:
        """Probe while an outage lasts, and end it when the database answers; raise
        DatabaseUnavailableError once one outlasts ``limit``. Cancel to stop."""
        while True:
            await self._began.wait()
            while True:
                await anyio.sleep(self._probe_interval)  # the probe that found it just failed
                if await self._answers():
                    break
                assert self._started is not None
                if anyio.current_time() - self._started > self._limit:
                    raise DatabaseUnavailableError(
                        f"the database stayed unavailable for more than {self._limit:g} s "
                        "while handler calls waited for it (outage_limit)"
                    )
            self._end()

    async def _answers(self) -> bool:
        with anyio.move_on_after(PROBE_TIMEOUT):
            try:
                await self._probe()
            except DatabaseUnavailableError:
                return False
            return True
        return False

    def _begin(self) -> None:
        self._started = anyio.current_time()
        self._back = anyio.Event()
        self._began.set()
        self._observer.outage_started()
        logger.warning(
            "the database is unavailable: projector waits for it (handler calls without using "
            "up retries)",
            extra={"action": "outage_started"},
        )

    def _end(self) -> None:
        assert self._started is not None
        lasted = anyio.current_time() - self._started
        self._started = None
        self._answered_at = anyio.current_time()
        self._began = anyio.Event()
        if self._on_back is not None:
            self._on_back()
        self._back.set()
        self._observer.outage_ended(lasted)
        logger.info(
            "the database is back after %.1f s: waiting streams resume",
            lasted,
            extra={"action": "outage_ended", "seconds": round(lasted, 3)},
        )
