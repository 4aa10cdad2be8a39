"""Handlers that fail at random for some streams, as a downstream service refusing some
entities now and then would: the random fault suite runs every group with them, so that held
streams go through kills, restarts, takeovers, rebalances and bucket moves.

A runner process fails a call with probability ``FAULT_FLAKY_RATE`` (its environment; 0 by
default) when the call's stream is one of the flaky tenth (by a hash of its name). Each call
draws again, so every stream is handled in the end, and nothing is parked when the suite's
runners allow enough attempts.
"""

from __future__ import annotations

import os
import random
import zlib

FLAKY_SHARE = 10  # one stream in this many is flaky
_RATE = float(os.environ.get("FAULT_FLAKY_RATE", "0"))
_DRAWS = random.Random()


class RefusedError(Exception):
    """A downstream service refused the stream's entity, this time."""


def is_flaky(stream_name: str) -> bool:
    return zlib.crc32(stream_name.encode()) % FLAKY_SHARE == 0


def maybe_fail(stream_name: str) -> None:
    """Raise RefusedError, now and then, for a flaky stream."""
    if _RATE and is_flaky(stream_name) and _DRAWS.random() < _RATE:
        raise RefusedError(f"{stream_name} refused, this time")
