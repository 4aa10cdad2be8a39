"""Transactional projections: the handler's writes and the stream's handled position commit
together, so each event changes the read model exactly once.

Per call (one stream span), in one transaction: lock the stream's row in
``projector.stream_positions`` (or remember it), drop the events at or below it, run the
handler on the transaction's connection, record the new position only if the row still holds
the old one (see `ExactlyOnce` for why that makes it exactly once), commit. Redelivered events
(after a crash, a rebalance or a checkpoint reset) are skipped before the handler sees them.
The row is keyed by group, not by member, so it holds across rebalances.

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

from projector.errors import ProjectorError
from projector.model.events import Event
from projector.model.projection import Projection
from projector.storage import database
from projector.storage.database import Connection, Pool

logger = logging.getLogger(__name__)

# The position a group last recorded for a stream (`waiting` reads it too).
RECORDED_POSITION = """
SELECT position FROM projector.stream_positions
WHERE group_name = %(group)s AND stream_name = %(stream)s
"""
LOCK_POSITION = RECORDED_POSITION + "FOR UPDATE\n"

# A compare-and-set: the write names the position it replaces (-1: no row yet), and a row that
# holds another one turns the update into a NULL, which the column refuses, so the statement
# fails, and with it the COMMIT sent after it. (NULL must not appear in VALUES: the column's
# constraint is checked on the proposed row before the conflict is.) Under READ COMMITTED the
# conflicting row is locked and re-read at its latest committed version, so a concurrent
# writer's position is seen once its transaction has ended.
RECORD_POSITION_AND_COMMIT = """
INSERT INTO projector.stream_positions AS recorded (group_name, stream_name, position, updated_at)
VALUES (%(group)s, %(stream)s, %(position)s, now())
ON CONFLICT (group_name, stream_name)
DO UPDATE SET position = CASE WHEN recorded.position = %(expected)s THEN EXCLUDED.position END,
              updated_at = EXCLUDED.updated_at;
COMMIT;
BEGIN
"""
NO_ROW = -1  # the expected position of a stream whose row does not exist yet

BEGIN = b"BEGIN"
ROLL_BACK_AND_BEGIN = b"ROLLBACK; BEGIN"
ROLL_BACK = b"ROLLBACK"

MAX_KNOWN_POSITIONS = 100_000  # streams whose recorded position a runner remembers
IDLE_RELEASE = 1.0  # seconds a connection may wait in its fresh transaction before release
CLEANUP_TIMEOUT = 5.0  # seconds a connection's release may take when a run ends or a call dies


class PositionMovedError(ProjectorError):
    """A transactional call found its stream's recorded position moved by someone else; its
    writes were rolled back."""


class _Session:
    """A pool connection with a transaction begun, waiting for a call."""

    __slots__ = ("conn", "cursor", "idle_since")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.cursor = psycopg.AsyncClientCursor(conn)
        self.idle_since = 0.0


class ExactlyOnce:
    """The sink's span handler for a transactional projection; use as ``async with``.

    Why each event is applied once, even with two runners on one stream at the same time (a
    zombie: paused past its lease, or cut off from its lock's session, then resumed while its
    successor runs; or a successor started while its killed predecessor's last transaction is
    still open on the server):

    - An event is applied only by a transaction that also writes the stream's position past
      it; both commit, or neither does.
    - That write is a compare-and-set against the position the call started from, which the
      call either read under ``FOR UPDATE`` or remembered from this runner's own last commit.
      The row's lock serialises writers, and the comparison is made with the latest committed
      value, so of two transactions that started from the same position at most one commits;
      the other fails and rolls back all of its writes. The positions a stream goes through
      form one chain, each transaction applying exactly the events between two links of it.
    - So a zombie can never commit a position that another runner has moved since the zombie
      last saw it, whatever it remembers and however late it wakes up. (It can commit one that
      nobody else moved: then it is the only one to have applied those events.) Nothing here
      trusts the member's lock for exactly-once; the lock only keeps such overlaps rare.

    A remembered position is only a hint that saves reading the row: it is taken out of memory
    for the length of each call and put back only when the call ended cleanly, so a call that
    failed or was cancelled, perhaps with its COMMIT done but unacknowledged, leaves the next
    call to read the row again. A call whose write finds the position moved is logged
    (``stream_position_moved``) and made once more from the row, under lock. Hints are
    forgotten oldest first past MAX_KNOWN_POSITIONS, and with the runner's tenure (see
    `lease`).
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
        # The remembered position is taken out for the call and put back only once the call
        # has ended cleanly: after a failure or a cancellation (whose COMMIT may or may not
        # have happened) the next call reads the row again, under lock.
        hint = self._known.pop(stream_name, None)
        try:
            return await self._call(stream_name, events, hint)
        except PositionMovedError as moved:
            # Once more from the row, under its lock. (A call that read the row already can
            # find it moved only if it had none: another runner recorded the stream's first
            # events meanwhile, and now there is a row to lock.)
            logger.warning(
                "%s: %s; reading it again",
                stream_name,
                moved,
                extra={
                    "action": "stream_position_moved",
                    "group": self._group,
                    "stream": stream_name,
                },
            )
            return await self._call(stream_name, events, None)

    async def _call(self, stream_name: str, events: list[Event], hint: int | None) -> int:
        session = await self._take()
        try:
            next_position, applied = await self._apply(session, stream_name, events, hint)
        except Exception:
            await self._roll_back(session)
            raise
        except BaseException:
            # Cancelled (a handler timeout, or the run ending) with a statement perhaps still
            # running: the pool closes or rolls back what it is given back.
            await self._give_back(session.conn)
            raise
        self._put_back(session)
        self._remember(stream_name, applied)
        return next_position

    async def _apply(
        self, session: _Session, stream_name: str, events: list[Event], hint: int | None
    ) -> tuple[int, int]:
        """Run the handler on the events not applied yet and commit with their position; the
        next position to expect, and the last one applied (recorded) for the stream.

        ``hint`` is the last position applied as this runner remembers it; without one, the
        row is read and locked first. Either way the position is written only if the row still
        holds the one this call started from (PositionMovedError otherwise)."""
        conn, params = session.conn, {"group": self._group, "stream": stream_name}
        applied, locked = hint, False
        if applied is None:
            row = await (await conn.execute(LOCK_POSITION, params)).fetchone()
            applied, locked = (NO_ROW if row is None else int(row[0])), True
        fresh = [event for event in events if event.position > applied]
        if not fresh:
            if locked:
                await conn.execute(ROLL_BACK_AND_BEGIN)  # lets go of the row's lock
            return max(events[-1].position, applied) + 1, applied
        next_position = await self._projection.handle_in_transaction(conn, stream_name, fresh)
        if next_position <= fresh[0].position:
            await conn.execute(ROLL_BACK_AND_BEGIN)  # it handled none of them: keep nothing
            return next_position, applied
        recorded = next_position - 1
        try:
            await session.cursor.execute(
                RECORD_POSITION_AND_COMMIT, {**params, "position": recorded, "expected": applied}
            )
        except psycopg.errors.NotNullViolation as exc:
            raise PositionMovedError(
                f"its recorded position is no longer {applied}: another runner applied its "
                "events meanwhile (a takeover), or a commit whose outcome was lost went through"
            ) from exc
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
        if applied == NO_ROW:
            return  # nothing recorded, nothing to remember: the next call locks and reads
        self._known[stream_name] = applied
        if len(self._known) > MAX_KNOWN_POSITIONS:
            self._known.popitem(last=False)
