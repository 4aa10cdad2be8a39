"""Shielded cleanups: what a stopping or failing run still does, and how long each may take.

A cleanup (the last checkpoint commit, unlocking the member, giving connections back, closing
the HTTP endpoint) runs shielded from cancellation, since it often runs *because* of one, and
time-boxed, since the database it talks to may be the reason the run is ending. One that runs
out of time is logged (``cleanup_timed_out``): what it did not do is then left to the server
(a session's end releases its lock and rolls back its transaction) or to the next run (the
checkpoints it did not commit are redelivered). Every such timeout is here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

logger = logging.getLogger(__name__)

FINAL_FLUSH = 10.0  # seconds the last checkpoint commit of a stopping runner may take
LEASE_RELEASE = 5.0  # seconds unlocking the member and closing its session may take
CONNECTION_RETURN = 5.0  # seconds giving a transactional connection back may take
ENDPOINT_STOP = 2.0  # seconds a stopping runner gives open HTTP connections


@contextmanager
def shielded(what: str, timeout: float) -> Iterator[anyio.CancelScope]:
    """Run the block shielded from cancellation for at most ``timeout`` seconds; log it when
    it ran out of time. ``what`` says what was being done, as in "the final checkpoint
    commit"."""
    with anyio.move_on_after(timeout, shield=True) as scope:
        yield scope
    if scope.cancelled_caught:
        logger.warning(
            "%s did not finish within %gs and was abandoned",
            what,
            timeout,
            extra={"action": "cleanup_timed_out", "cleanup": what, "timeout": timeout},
        )
