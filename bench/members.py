"""The projections the elastic benchmark's `projector run --elastic` processes run.

- ``calls`` records every handler call (stream, every stream position it was given, process,
  wall time at the call's start) in the table named by ``BENCH_CALLS_TABLE``, so that the bench
  can compare them with ``message_store.messages``, event by event: an event in two calls was
  delivered twice, and one in none (even inside a call's range) was missed.
- ``tally`` does nothing per call but count, and writes the process's count and the wall times
  of its first and last calls to ``BENCH_TALLY_DIR/<pid>.json`` as the process exits: a catch-up
  figure with no write per call to slow it, and exact to the call (a checkpoint only moves
  every ``checkpoint_interval``).

Kept apart from `bench.elastic` so that a member process imports nothing of the bench's own:
its start-up time is part of what the join figure measures.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import anyio
import psycopg
from psycopg import sql

from projector import Event, Projection

calls = Projection("bench_calls")
_connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
# Calls of several streams run at once; they share one connection, one statement at a time.
_lock = anyio.Lock()


@calls.handler
async def record_call(stream_name: str, events: list[Event]) -> None:
    global _connection
    at = time.time()  # before any wait of ours: when projector handed the events over
    params = (stream_name, [event.position for event in events], os.getpid(), at)
    async with _lock:
        if _connection is None:
            _connection = await psycopg.AsyncConnection.connect(
                os.environ["PROJECTOR_DATABASE_URL"], autocommit=True
            )
        await _connection.execute(_insert_call(), params)


@cache
def _insert_call() -> bytes:
    return (
        sql.SQL("INSERT INTO {} (stream, positions, pid, at) VALUES (%s, %s, %s, %s)")
        .format(sql.Identifier(os.environ["BENCH_CALLS_TABLE"]))
        .as_bytes(None)
    )


@dataclass
class Tally:
    """This process's calls: events handled, and the wall times of the first and last call."""

    events: int = 0
    first: float = 0.0
    last: float = 0.0


tally = Projection("bench_tally")
_tally = Tally()


@tally.handler
async def count(stream_name: str, events: list[Event]) -> None:
    now = time.time()
    if not _tally.events:
        _tally.first = now
    _tally.last = now
    _tally.events += len(events)


@atexit.register
def _write_tally() -> None:
    folder = os.environ.get("BENCH_TALLY_DIR")
    if folder and _tally.events:
        (Path(folder) / f"{os.getpid()}.json").write_text(json.dumps(asdict(_tally)))
