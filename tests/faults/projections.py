"""The projections the fault suites run, imported by `projector run` in each runner process.

- ``totals`` (transactional; ``elastic_totals`` is the same, as a transactional *batch*
  handler, into a table of its own): per stream, the sum of the events' ``n``, how many events
  were applied, and the last position applied; a call whose first event is not the one after
  the last applied counts a gap. Applying any event twice, or skipping one, shows in the
  totals.
- ``deliveries`` (at least once): records every event of every call that returned, with the
  process that handled it, over a connection of its own that it opens again after it broke.
- ``calls`` (at least once, the elastic suite's): records every call that returned, with every
  position it was given, its process, and when it ran, over that same kind of connection.

All three fail now and then for a tenth of the streams when the runner's environment asks for
it (`tests.faults.flaky`), so that their streams are held, retried and rejoin the flow (in a
batch, after the call is split down to them).
"""

from __future__ import annotations

import os
import time

import anyio
import psycopg

from projector import Event, Projection
from projector.storage.database import Connection
from tests.faults.flaky import maybe_fail

ADD = """
INSERT INTO fault_totals AS t (stream, total, applied, last_position, gaps)
VALUES (%(stream)s, %(total)s, %(applied)s, %(last)s, %(gap)s)
ON CONFLICT (stream) DO UPDATE
SET total = t.total + EXCLUDED.total,
    applied = t.applied + EXCLUDED.applied,
    last_position = EXCLUDED.last_position,
    gaps = t.gaps + (%(first)s <> t.last_position + 1)::int
"""

RECORD = """
INSERT INTO fault_deliveries (stream, position, pid)
SELECT %(stream)s, unnest(%(positions)s::bigint[]), %(pid)s
"""


def _added(stream_name: str, events: list[Event]) -> dict[str, object]:
    first = events[0].position
    return {
        "stream": stream_name,
        "total": sum(int(event.data["n"]) for event in events),
        "applied": len(events),
        "last": events[-1].position,
        "first": first,
        "gap": int(first != 0),  # counted when the stream's row is new
    }


def _totals(name: str, table: str) -> Projection:
    """A transactional projection of per-stream totals into ``table``."""
    projection = Projection(name)
    statement = ADD.replace("fault_totals", table).encode()

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None:
        maybe_fail(stream_name)
        await conn.execute(statement, _added(stream_name, events))

    return projection


def _batch_totals(name: str, table: str) -> Projection:
    """The same totals from a transactional batch handler: a call fails whole when any of
    its streams does, and is split down to it."""
    projection = Projection(name)
    statement = ADD.replace("fault_totals", table).encode()

    @projection.transactional_batch
    async def apply_all(spans: dict[str, list[Event]], conn: Connection) -> None:
        for stream_name, events in spans.items():
            maybe_fail(stream_name)
            await conn.execute(statement, _added(stream_name, events))

    return projection


totals = _totals("totals", "fault_totals")
# The elastic groups': the same totals, in a table of their own (the random suite's in batches).
elastic_totals = _batch_totals("elastic_totals", "fault_elastic_totals")


deliveries = Projection("deliveries")
_connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
# One connection for the process's concurrent calls, used by one at a time: opened, used and
# closed (after it broke) under the lock, so no call closes it while another waits on it.
_lock = anyio.Lock()


@deliveries.handler
async def deliver(stream_name: str, events: list[Event]) -> None:
    maybe_fail(stream_name)
    positions = [event.position for event in events]
    await _record(RECORD, {"stream": stream_name, "positions": positions, "pid": os.getpid()})


# The elastic suite's projection: one row per call that returned, with every position it was
# given (so an event left out of the middle of a call shows as missing), its process, and when
# it began and ended by the handler's own clock. A call lasts CALL_SECONDS at least, a real wait
# inside the window it records: two processes in one stream at once show up as two windows
# that intersect, however the calls were scheduled.
CALLS_TABLE = """
CREATE TABLE IF NOT EXISTS fault_calls (
    seq bigserial PRIMARY KEY,
    stream text NOT NULL,
    positions bigint[] NOT NULL,
    pid int NOT NULL,
    started float8 NOT NULL,
    ended float8 NOT NULL
)
"""
CALL = """
INSERT INTO fault_calls (stream, positions, pid, started, ended)
VALUES (%(stream)s, %(positions)s, %(pid)s, %(started)s, %(ended)s)
"""
CALL_SECONDS = 0.02

calls = Projection("calls")


@calls.handler
async def record_call(stream_name: str, events: list[Event]) -> None:
    started = time.time()
    await anyio.sleep(CALL_SECONDS)
    params = {
        "stream": stream_name,
        "positions": [event.position for event in events],
        "pid": os.getpid(),
        "started": started,
        "ended": time.time(),
    }
    await _record(CALL, params)


async def _record(statement: str, params: dict[str, object]) -> None:
    """Run one statement on the process's own connection, opened again after it broke."""
    global _connection
    async with _lock:
        try:
            if _connection is None:
                _connection = await psycopg.AsyncConnection.connect(
                    os.environ["PROJECTOR_DATABASE_URL"],
                    autocommit=True,
                    connect_timeout=2,
                    application_name="fault-handler",
                )
            await _connection.execute(statement.encode(), params)
        except psycopg.OperationalError:
            broken, _connection = _connection, None
            if broken is not None:
                await broken.close()
            raise
