"""Transactional projections: the handler's writes and the stream's handled position commit
together, so each event changes the read model exactly once.

Per call (one stream span), in one transaction: lock the stream's row in
``projector.stream_positions`` (or know it), drop the events at or below it, run the handler on
the transaction's connection, record the new position, commit. Redelivered events (after a
crash, a rebalance or a checkpoint reset) are skipped before the handler sees them. The row is
keyed by group, not by member, so it holds across rebalances.

A call costs the handler's own statements plus one round trip: its connection comes with its
transaction already begun, and the position, the COMMIT and the BEGIN of the connection's next
transaction go to the server in one message (bound client-side, which lets one message hold
several statements). A call that handled nothing rolls back instead. Connections wait between
calls in that fresh, empty transaction (no snapshot yet, nothing locked), and one unused for
``IDLE_RELEASE`` seconds is rolled back and given back to the pool, so none stays idle in a
transaction for long (servers may set ``idle_in_transaction_session_timeout``).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from types import TracebackType
from typing import Self

import anyio
import psycopg
from anyio.abc import TaskGroup
from psycopg_pool import PoolTimeout

from projector import database
from projector.database import Connection, Pool
from projector.events import Event
from projector.projection import Projection

logger = logging.getLogger(__name__)

# The position a group last recorded for a stream (`waiting` reads it too).
RECORDED_POSITION = """
SELECT position FROM projector.stream_positions
WHERE group_name = %(group)s AND stream_name = %(stream)s
"""
LOCK_POSITION = RECORDED_POSITION + "FOR UPDATE\n"

RECORD_POSITION_AND_COMMIT = """
INSERT INTO projector.stream_positions (group_name, stream_name, position, updated_at)
VALUES (%(group)s, %(stream)s, %(position)s, now())
ON CONFLICT (group_name, stream_name)
DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at;
COMMIT;
BEGIN
"""

BEGIN = b"BEGIN"
ROLL_BACK_AND_BEGIN = b"ROLLBACK; BEGIN"
ROLL_BACK = b"ROLLBACK"

MAX_KNOWN_POSITIONS = 100_000  # streams whose recorded position a runner remembers
IDLE_RELEASE = 1.0  # seconds a connection may wait in its fresh transaction before release
CLEANUP_TIMEOUT = 5.0  # seconds a connection's release may take when a run ends or a call dies


class _Session:
    """A pool connection with a transaction begun, waiting for a call."""

    __slots__ = ("conn", "cursor", "idle_since")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cursor = psycopg.AsyncClientCursor(conn)
        self.idle_since = 0.0


class ExactlyOnce:
    """The sink's span handler for a transactional projection; use as ``async with``.

    While it runs, a runner is the only writer of its streams' rows (it holds its member's
    lock), so a position it has committed itself is known without reading it back; a stream it
    has not written yet is read first, under FOR UPDATE. Known positions are forgotten oldest
    first past MAX_KNOWN_POSITIONS, and with the process. (psycopg's pipeline mode, tried to send
    the statements together, cost more CPU than the round trips it saved.)
    """

    def __init__(self, projection: Projection, pool: Pool, group: str) -> None:
        self._projection = projection
        self._pool = pool
        self._group = group
        self._known: OrderedDict[str, int] = OrderedDict()
        self._idle: list[_Session] = []  # most recently used last
        self._tasks: TaskGroup | None = None

    async def __aenter__(self) -> Self:
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._release_idle, name="projector-transactions-release")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            while self._idle:
                await self._release(self._idle.pop())
        return await self._tasks.__aexit__(exc_type, exc, tb)

    async def handle(self, stream_name: str, events: list[Event]) -> int:
        session = await self._take()
        try:
            next_position, recorded = await self._apply(session, stream_name, events)
        except Exception:
            await self._roll_back(session)
            raise
        except BaseException:
            # Cancelled (a handler timeout, or the run ending) with a statement perhaps still
            # running: the pool closes or rolls back what it is given back.
            await self._give_back(session.conn)
            raise
        self._put_back(session)
        if recorded is not None:
            self._remember(stream_name, recorded)  # committed: the COMMIT has returned
        return next_position

    async def _apply(
        self, session: _Session, stream_name: str, events: list[Event]
    ) -> tuple[int, int | None]:
        """Run the handler on the events not applied yet and commit with their position; the
        next position to expect, and the position recorded (None: nothing was committed)."""
        conn, params = session.conn, {"group": self._group, "stream": stream_name}
        applied = self._known.get(stream_name)
        if applied is None:
            row = await (await conn.execute(LOCK_POSITION, params)).fetchone()
            applied = -1 if row is None else int(row[0])
            locked = True
        else:
            locked = False
        fresh = [event for event in events if event.position > applied]
        if not fresh:
            if locked:
                await conn.execute(ROLL_BACK_AND_BEGIN)  # lets go of the row's lock
            return max(events[-1].position, applied) + 1, None
        next_position = await self._projection.handle_in_transaction(conn, stream_name, fresh)
        if next_position <= fresh[0].position:
            await conn.execute(ROLL_BACK_AND_BEGIN)  # it handled none of them: keep nothing
            return next_position, None
        recorded = next_position - 1
        await session.cursor.execute(RECORD_POSITION_AND_COMMIT, {**params, "position": recorded})
        return next_position, recorded

    async def _take(self) -> _Session:
        if self._idle:
            return self._idle.pop()
        try:
            conn = await self._pool.getconn()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise database.unavailable_during("starting a transactional call", exc) from exc
        try:
            await conn.execute(BEGIN)
        except BaseException:
            await self._give_back(conn)
            raise
        return _Session(conn)

    async def _give_back(self, conn: Connection) -> None:
        """Return a connection to the pool, which discards it if broken; shielded and
        time-boxed, since it also runs while a call is being cancelled."""
        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
            await self._pool.putconn(conn)

    def _put_back(self, session: _Session) -> None:
        session.idle_since = time.monotonic()
        self._idle.append(session)

    async def _roll_back(self, session: _Session) -> None:
        """After a failed call: undo its writes and keep the connection, unless it is broken."""
        try:
            await session.conn.execute(ROLL_BACK_AND_BEGIN)
        except psycopg.Error:
            # Broken (the call most likely failed because of it): the pool discards it, and the
            # next call starts on another.
            await self._give_back(session.conn)
            return
        self._put_back(session)

    async def _release_idle(self) -> None:
        """Give connections unused for IDLE_RELEASE seconds back to the pool; cancel to stop."""
        while True:
            await anyio.sleep(IDLE_RELEASE)
            cutoff = time.monotonic() - IDLE_RELEASE
            stale = [session for session in self._idle if session.idle_since < cutoff]
            self._idle = [session for session in self._idle if session.idle_since >= cutoff]
            for session in stale:
                await self._release(session)

    async def _release(self, session: _Session) -> None:
        try:
            await session.conn.execute(ROLL_BACK)
        except psycopg.Error as exc:
            # Lost while it waited (e.g. the server restarted): the pool discards it.
            logger.debug(
                "a transactional connection was lost while idle: %s",
                exc,
                extra={"action": "transaction_connection_lost"},
            )
        await self._give_back(session.conn)

    def _remember(self, stream_name: str, applied: int) -> None:
        self._known[stream_name] = applied
        self._known.move_to_end(stream_name)
        if len(self._known) > MAX_KNOWN_POSITIONS:
            self._known.popitem(last=False)
