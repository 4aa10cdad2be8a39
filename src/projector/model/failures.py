"""What happens when a handler call fails: retry that stream with backoff, then park or stop.

Handlers raise ordinary exceptions for "try again later"; two exceptions let them say more:
`RetryAfter` asks for a specific delay, `PoisonEvent` says retrying is pointless. The decisions
here are pure (no I/O). A `RetryPolicy` says what the stream deserves (`Retry`, `Park` or
`Stop`); the runner turns that into what the sink does with it (a `Decision`): a stream to be
retried or parked is recorded durably and held out of the read path (`Hold`), so that no other
stream waits for it; only a lost connection (`RetryWhen`, or a short `Retry`) and the ``stop``
policy keep a stream, and its batches, waiting in the sink.

A call that outlasts ``handler_timeout`` is cancelled and fails with `HandlerTimeout`.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_JITTER = random.Random()  # noqa: S311 (jitter, not secrets)


class RetryAfter(Exception):
    """Raise from a handler to have the stream's events offered again after ``seconds``."""

    def __init__(self, seconds: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {seconds} s")
        self.seconds = seconds


class PoisonEvent(Exception):
    """Raise from a handler when retrying cannot help: the stream is parked (or the run stops,
    under the ``stop`` policy) at once."""


class HandlerTimeout(Exception):
    """A handler call ran longer than ``handler_timeout`` and was cancelled."""


class OnExhausted(enum.StrEnum):
    """What to do with a stream whose handler keeps failing after every retry."""

    PARK = "park"
    STOP = "stop"


@dataclass(frozen=True, slots=True)
class Retry:
    """Offer the stream's events again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class RetryWhen:
    """Offer the stream's events again as soon as ``ready()`` returns (the database is back);
    the failure is not the stream's, so it does not count as an attempt."""

    ready: Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Park:
    """Give up on the stream until an operator retries it (recorded by the runner)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Take the stream out of the read path: its batches complete without it and its events
    are dropped as read, until a replay from the stream itself brings it back. The runner
    records the hold durably before the sink is told, so nothing is lost."""

    reason: str


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the run: the checkpoint stays before the failing batch."""

    reason: str


Verdict = Retry | Park | Stop
"""What a `RetryPolicy` says a failing stream deserves."""

Decision = Retry | RetryWhen | Hold | Stop
"""What the sink does with a failing stream."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits a random time up to
    ``min(cap, base * 2**(n-1))``, so many failing streams do not retry in lockstep."""

    base: float = 0.5
    cap: float = 60.0
    max_attempts: int = 8
    on_exhausted: OnExhausted = OnExhausted.PARK

    def decide(
        self, error: BaseException, attempt: int, rng: random.Random | None = None
    ) -> Verdict:
        """The decision after the ``attempt``-th failed call in a row (1 for the first)."""
        if isinstance(error, PoisonEvent):
            return self._give_up(f"the handler declared the event poison: {error}")
        if attempt >= self.max_attempts:
            return self._give_up(f"failed {attempt} times in a row")
        if isinstance(error, RetryAfter):
            return Retry(max(0.0, error.seconds))
        return Retry(self.backoff(attempt, rng))

    def _give_up(self, reason: str) -> Park | Stop:
        return Park(reason) if self.on_exhausted is OnExhausted.PARK else Stop(reason)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return (rng or _JITTER).uniform(0, ceiling)


# Lost connections: quick at first (a restart takes seconds), then every few seconds.
RECONNECT = RetryPolicy(base=0.2, cap=5.0)
# Starting again after an outage: a try (one connection) at least every second, so that a
# runner projects again within about a second of the database's return.
RESTART = RetryPolicy(base=0.2, cap=1.0)
