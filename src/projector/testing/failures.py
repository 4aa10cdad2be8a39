"""Assertions on failing streams: retried during a run, or parked in ``projector.held_streams``
with their error (what `projector failing list` shows)."""

from __future__ import annotations

import re

from projector.model.projection import Projection
from projector.storage.held import HeldState, HeldStream
from projector.testing.database import Database, as_database
from projector.testing.running import CaughtUp, Failure

ErrorMatch = str | re.Pattern[str]
"""Text the error (``"ValueError: the message"``) contains, or a pattern it matches."""


async def assert_parked(
    database: Database | str,
    projection: Projection | str,
    stream: str,
    *,
    error: ErrorMatch | None = None,
) -> HeldStream:
    """Fail unless ``projection`` (or the group of that name) has parked ``stream``, with an
    error that matches ``error``; return its row (position, event, attempts, traceback)."""
    group = projection if isinstance(projection, str) else projection.name
    held = await as_database(database).held_streams(group)
    found = [row for row in held if row.stream_name == stream]
    if not found or found[0].state is not HeldState.PARKED:
        listed = ", ".join(f"{row.stream_name} ({row.state})" for row in held) or "none"
        raise AssertionError(f"{group} has not parked {stream}; its held streams: {listed}")
    row = found[0]
    if error is not None and not _matches(error, row.error):
        raise AssertionError(f"{stream} is parked with {row.error!r}, not {_describe(error)}")
    return row


def assert_retried(run: CaughtUp, stream: str, *, error: ErrorMatch | None = None) -> list[Failure]:
    """Fail unless ``run`` held ``stream`` to retry it (a failed call it did not park), with an
    error that matches ``error``; return those failures."""
    retried = [f for f in run.failures_of(stream) if not f.parked]
    if not retried:
        raise AssertionError(
            f"{stream} was not retried; the run's failures: {list(run.failures) or 'none'}"
        )
    if error is not None and not any(_matches(error, f.error) for f in retried):
        errors = sorted({f.error for f in retried})
        raise AssertionError(f"{stream} was retried with {errors}, not {_describe(error)}")
    return retried


def _matches(expected: ErrorMatch, error: str) -> bool:
    if isinstance(expected, re.Pattern):
        return expected.search(error) is not None
    return expected in error


def _describe(expected: ErrorMatch) -> str:
    if isinstance(expected, re.Pattern):
        return f"an error matching {expected.pattern!r}"
    return f"an error containing {expected!r}"
