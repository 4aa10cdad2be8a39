"""``projector.stream_positions``: per group and stream, the last position a transactional
projection applied, written in the same transaction as the handler's own writes.

A `Transactions` hands out pool connections with a transaction already begun (`Session`), so
that a call costs the handler's statements plus one round trip: the position, the COMMIT and
the BEGIN of the connection's next transaction go to the server in one message (bound
client-side, which lets one message hold several statements). Connections wait between calls
in that fresh, empty transaction (no snapshot yet, nothing locked), and one unused for
``IDLE_RELEASE`` seconds is rolled back and given back to the pool, so none stays idle in a
transaction for long (servers may set ``idle_in_transaction_session_timeout``).

The row is keyed by group, not by member, so it holds across rebalances.
"""

from __future__ import annotations

import logging
import time

import anyio
import psycopg

from projector import cleanup
from projector.cleanup import CONNECTION_RETURN
from projector.errors import PositionMovedError, ProjectorError
from projector.storage import database
from projector.storage.database import Connection, Pool

logger = logging.getLogger(__name__)

RECORDED_POSITION = """
SELECT position FROM projector.stream_positions
WHERE group_name = %(group)s AND stream_name = %(stream)s
"""
LOCK_POSITION = RECORDED_POSITION + "FOR UPDATE\n"
FORGET = "DELETE FROM projector.stream_positions WHERE group_name = %(group)s"

# A compare-and-set: the write names the position it replaces (-1: no row yet), and a row that
# holds another one turns the update into a NULL, which the column refuses, so the statement
# fails, and with it the COMMIT sent after it. (NULL must not appear in VALUES: the column's
# constraint is checked on the proposed row before the conflict is.) Under READ COMMITTED the
# conflicting row is locked and re-read at its latest committed version, so a concurrent
# writer's position is seen once its transaction has ended.
# Followed by the next transaction's BEGIN (the session's own: see `Session`).
RECORD_POSITION_AND_COMMIT = b"""
INSERT INTO projector.stream_positions AS recorded (group_name, stream_name, position, updated_at)
VALUES (%(group)s, %(stream)s, %(position)s, now())
ON CONFLICT (group_name, stream_name)
DO UPDATE SET position = CASE WHEN recorded.position = %(expected)s THEN EXCLUDED.position END,
              updated_at = EXCLUDED.updated_at;
COMMIT;
"""
NO_ROW = -1  # the expected position of a stream whose row does not exist yet

# A batch's streams, locked in one order (the sort runs below the lock), so that two batch
# transactions locking overlapping streams wait for each other instead of deadlocking. Arrays
# are bound in binary: for hundreds of names, rendering them as text costs more than the trip.
LOCK_POSITIONS = """
SELECT stream_name, position FROM projector.stream_positions
WHERE group_name = %(group)s AND stream_name = ANY(%(streams)b)
ORDER BY stream_name
FOR UPDATE
"""

# The compare-and-set of RECORD_POSITION_AND_COMMIT for every stream of a batch, in one
# statement. ON CONFLICT's SET sees only the proposed row, not the position it should replace,
# so the rows expected to exist are updated first, joined to the proposals: a row holding
# another position gets NULL and fails the statement (under READ COMMITTED a row updated
# meanwhile is re-read at its latest committed version, and the CASE evaluated on that). Every
# stream that update did not touch (no row expected, or its row gone) is inserted, and any
# conflict there fails the statement too: someone else created the row since this transaction
# found none. So a batch commits only if every one of its rows held what it started from.
# (The ANY makes the update look up its rows by key: a join alone reads the group's every row.)
# Bound server-side and in binary, then COMMIT; BEGIN: one round trip more than a single
# stream's, and much less CPU than rendering hundreds of values into the text of one message.
RECORD_POSITIONS = """
WITH proposed AS (
    SELECT * FROM unnest(%(streams)b::text[], %(positions)b::bigint[], %(expected)b::bigint[])
        AS proposed (stream_name, position, expected)
), moved AS (
    UPDATE projector.stream_positions AS recorded
    SET position = CASE WHEN recorded.position = proposed.expected THEN proposed.position END,
        updated_at = now()
    FROM proposed
    WHERE recorded.group_name = %(group)s AND recorded.stream_name = ANY(%(streams)b::text[])
      AND recorded.stream_name = proposed.stream_name AND proposed.expected <> -1
    RETURNING recorded.stream_name
)
INSERT INTO projector.stream_positions AS recorded (group_name, stream_name, position, updated_at)
SELECT %(group)s, stream_name, position, now() FROM proposed
WHERE stream_name NOT IN (SELECT stream_name FROM moved)
ON CONFLICT (group_name, stream_name) DO UPDATE SET position = NULL
"""
BEGIN = b"BEGIN"
ROLL_BACK = b"ROLLBACK"

IDLE_RELEASE = 1.0  # seconds a connection may wait in its fresh transaction before release


async def recorded_position(conn: Connection, group: str, stream_name: str) -> int | None:
    """The last position ``group`` applied of the stream, None if it applied none."""
    params = {"group": group, "stream": stream_name}
    row = await (await conn.execute(RECORDED_POSITION, params)).fetchone()
    return None if row is None else int(row[0])


def is_conflict(error: BaseException) -> bool:
    """Whether a transaction failed for meeting another (a deadlock, a serialization failure),
    so that making it again may succeed."""
    conflicts = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
    return database.refusal(error, conflicts) is not None


async def session_on(conn: Connection, begin: bytes = BEGIN) -> Session:
    """A session on a connection of the caller's own (not a pool's), its transaction begun;
    the connection is switched to autocommit, so that BEGIN and COMMIT are the session's."""
    await conn.set_autocommit(True)
    await conn.execute(begin)
    return Session(conn, begin)


class Session:
    """A pool connection with a transaction begun, waiting for a call: the handler writes on
    ``conn``, and the session reads, locks and records the stream's position around it.

    ``begin`` is what begins each of its transactions: BEGIN, or BEGIN with a projection
    version's ``search_path`` (`projector.storage.versions.begin_statement`)."""

    __slots__ = ("_commit", "_cursor", "_record", "_roll_back", "conn", "idle_since")

    def __init__(self, conn: Connection, begin: bytes = BEGIN) -> None:
        self.conn = conn
        self._cursor = psycopg.AsyncClientCursor(conn)
        self.idle_since = 0.0
        self._commit = b"COMMIT; " + begin
        self._roll_back = b"ROLLBACK; " + begin
        # Bound client-side: a literal % of the BEGIN would read as a placeholder.
        self._record = RECORD_POSITION_AND_COMMIT + begin.replace(b"%", b"%%")

    async def lock_position(self, group: str, stream_name: str) -> int:
        """The stream's recorded position (NO_ROW: none yet), its row locked until the
        transaction ends."""
        params = {"group": group, "stream": stream_name}
        row = await (await self.conn.execute(LOCK_POSITION, params)).fetchone()
        return NO_ROW if row is None else int(row[0])

    async def lock_positions(self, group: str, stream_names: list[str]) -> dict[str, int]:
        """Each stream's recorded position (NO_ROW: none yet), their rows locked until the
        transaction ends."""
        params = {"group": group, "streams": stream_names}
        rows = await (await self.conn.execute(LOCK_POSITIONS, params)).fetchall()
        positions = dict.fromkeys(stream_names, NO_ROW)
        positions.update((name, int(position)) for name, position in rows)
        return positions

    async def discard(self) -> None:
        """Roll back what the transaction did (and its row locks), and begin the next."""
        await self.conn.execute(self._roll_back)

    async def record_and_commit(
        self, group: str, stream_name: str, position: int, *, expected: int
    ) -> None:
        """Record ``position`` if the row still holds ``expected``, and commit; otherwise
        PositionMovedError, with the transaction failed (`discard` it)."""
        params = {"group": group, "stream": stream_name, "position": position}
        try:
            await self._cursor.execute(self._record, {**params, "expected": expected})
        except Exception as exc:
            if database.refusal(exc, psycopg.errors.NotNullViolation) is None:
                raise
            raise PositionMovedError(
                f"its recorded position is no longer {expected}: another runner applied its "
                "events meanwhile (a takeover), or a commit whose outcome was lost went through"
            ) from exc


    async def commit(self) -> None:
        """Commit what the handler wrote, recording no position (the read model holds them),
        and begin the next."""
        await self.conn.execute(self._commit)

    async def record_all_and_commit(
        self, group: str, positions: dict[str, int], *, expected: dict[str, int]
    ) -> None:
        """Record every stream's position if each row still holds its ``expected`` one, and
        commit; otherwise PositionMovedError, with the transaction failed (`discard` it)."""
        names = list(positions)
        params = {
            "group": group,
            "streams": names,
            "positions": [positions[name] for name in names],
            "expected": [expected[name] for name in names],
        }
        try:
            await self.conn.execute(RECORD_POSITIONS, params)
        except Exception as exc:
            if database.refusal(exc, psycopg.errors.NotNullViolation) is None:
                raise
            raise PositionMovedError(
                "the recorded position of one of its streams moved: another runner applied "
                "its events meanwhile (a takeover), or a commit whose outcome was lost went "
                "through"
            ) from exc
        await self.conn.execute(self._commit)


class Transactions:
    """Sessions taken from a pool and kept between calls, each transaction begun with
    ``begin`` (see `Session`); run `release_idle` beside them, and `close` when done."""

    def __init__(self, pool: Pool, *, begin: bytes = BEGIN) -> None:
        self._pool = pool
        self._begin = begin
        self._idle: list[Session] = []  # most recently used last

    async def take(self) -> Session:
        if self._idle:
            return self._idle.pop()
        conn = await database.take(self._pool, doing="starting a transactional call")
        try:
            await conn.execute(self._begin)
        except BaseException:
            await self.give_back(session=None, conn=conn)
            raise
        return Session(conn, self._begin)

    def keep(self, session: Session) -> None:
        """Keep a session whose transaction is fresh (committed or discarded) for the next call."""
        session.idle_since = time.monotonic()
        self._idle.append(session)

    async def keep_after_failure(self, session: Session) -> None:
        """After a failed call: undo its writes and keep the connection, unless it is broken."""
        try:
            await session.discard()
        except ProjectorError:
            # Broken (the call most likely failed because of it): the pool discards it, and the
            # next call starts on another.
            await self.give_back(session)
            return
        self.keep(session)

    async def give_back(self, session: Session | None, *, conn: Connection | None = None) -> None:
        """Return a connection to the pool, which closes or rolls back what it is given;
        shielded and time-boxed, since it also runs while a call is being cancelled."""
        target = conn if session is None else session.conn
        assert target is not None
        with cleanup.shielded("giving a transactional connection back", CONNECTION_RETURN):
            await self._pool.putconn(target)

    async def release_idle(self) -> None:
        """Give sessions unused for IDLE_RELEASE seconds back to the pool; cancel to stop."""
        while True:
            await anyio.sleep(IDLE_RELEASE)
            cutoff = time.monotonic() - IDLE_RELEASE
            stale = [session for session in self._idle if session.idle_since < cutoff]
            self._idle = [session for session in self._idle if session.idle_since >= cutoff]
            for session in stale:
                await self._release(session)

    async def close(self) -> None:
        """Give every idle session back, within one cleanup timeout in all."""
        with cleanup.shielded("giving idle transactional connections back", CONNECTION_RETURN):
            while self._idle:
                await self._release(self._idle.pop())

    async def _release(self, session: Session) -> None:
        try:
            await session.conn.execute(ROLL_BACK)
        except ProjectorError as exc:
            # Lost while it waited (e.g. the server restarted): the pool discards it.
            logger.debug(
                "a transactional connection was lost while idle: %s",
                exc,
                extra={"action": "transaction_connection_lost"},
            )
        await self.give_back(session)


async def forget(conn: Connection, group: str) -> int:
    """Delete every position ``group`` recorded, so that its transactional handlers are given
    again what they applied (a test of the handler's own idempotency); how many there were."""
    cursor = await conn.execute(FORGET, {"group": group})
    return cursor.rowcount
