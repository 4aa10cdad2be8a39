"""One runner per group member: a Postgres advisory lock held by one session of the runner's.

Why an advisory lock and not a lease table: the server releases a session's lock the moment the
session ends, however the process died (kill -9 included, or a network cut once TCP notices),
with no heartbeat writes and no clock to trust. A standby polls for the lock and takes over as
soon as it is free. The price: the lock lives on one connection, which must be a real session
(not a transaction-mode pooler such as PgBouncer's).

A process that is alive but silent (stopped with SIGSTOP, frozen, cut off) keeps its session,
and so its member, until the server ends the session: on PostgreSQL 14 and later the session
sets ``idle_session_timeout`` to ``lease_timeout``, and the runner speaks on it every
``lease_timeout / 4`` seconds at most, so a runner silent for longer than its lease loses it
and a standby takes over. That is the lease timeout.

A runner's tenure is the life of one session: when `until_lost` finds the session broken (the
server restarted or crashed, the session was terminated or timed out), it raises
LeaseLostError and the runner starts over, as a new start would, from the checkpoints the
database holds (or waits as the standby of whoever took the member meanwhile). It never takes
the lock again and carries on with what it had in memory: another runner may have projected
the member meanwhile, and a crash may have lost commits the server had acknowledged (with
``synchronous_commit = off``); what the database holds after the crash is a prefix of what
was committed, in commit order, so starting from its checkpoints redelivers every lost write.

What the lock guarantees, and what it does not, when another runner takes over the member at
any instruction boundary (the zombie argument):

- **Checkpoints** are loaded and committed on the lock's own session (see `checkpoints`). The
  server runs a statement on a session only while that session exists, and releases the lock
  only when it ends, so every checkpoint commit it executes was made by the lock's holder at
  that moment, and a successor (which can only take the lock after that session ended) loads
  everything its predecessor committed. A zombie can commit no checkpoint: its session is
  gone, and it never opens another for the same tenure.
- **Stream positions** of transactional projections are written on pool connections, not on
  the lock's session, so the lock cannot fence them: between losing the session and noticing
  (up to a watch interval), a zombie's calls go on. They are fenced by the stream's own row
  instead (a compare-and-set, see `exactly_once`), which holds whatever the lock does.
- **At-least-once handlers** of a zombie may run beside its successor's for the same stream
  until the zombie notices: events are delivered twice, each process in stream order.
- **Parked streams** are written on pool connections too, unfenced: a zombie could park (or
  unpark) a stream its successor runs. Parking takes ``retry_max_attempts`` failed calls
  with backoff in between, seconds to minutes, against a zombie's window of one watch
  interval; and a parked row loses nothing, it only holds the stream back until retried.
- **Memory** (remembered stream positions, skip hints, parked streams, positions handled)
  belongs to one tenure and is dropped with it.
"""

from __future__ import annotations

import logging
import os
import socket
from types import TracebackType
from typing import Self

import anyio

from projector import cleanup
from projector.errors import (
    DatabaseUnavailableError,
    LeaseLostError,
    MemberBusyError,
)
from projector.model.events import hash_64, member_name
from projector.storage import database
from projector.storage.database import Connection
from projector.storage.held import LockFence

logger = logging.getLogger(__name__)

TRY_LOCK = "SELECT pg_try_advisory_lock(%(key)s)"
TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock(%(key)s)"
# A bigint advisory lock shows in pg_locks as classid (high 32 bits) and objid (low 32 bits).
HOLDER = """
SELECT a.application_name, coalesce(a.client_addr::text, 'local'), a.pid
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(classid)s::oid AND l.objid = %(objid)s::oid
LIMIT 1
"""
PING = "SELECT 1"
UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"
SET_LEASE_TIMEOUT = "SELECT set_config('idle_session_timeout', %(ms)s, false)"
IDLE_SESSION_TIMEOUT_SINCE = 140_000  # server_version_num of PostgreSQL 14

DEFAULT_STANDBY_POLL = 1.0
DEFAULT_WATCH_INTERVAL = 2.0
DEFAULT_LEASE_TIMEOUT = 30.0


def lock_key(group: str, member: int) -> int:
    """The advisory lock key of one member (a plain group is member 0)."""
    return hash_64(f"projector/{group}/{member}")


def lock_ids(group: str, member: int) -> dict[str, int]:
    """The member's lock as pg_locks shows it: classid (high 32 bits), objid (low 32 bits)."""
    unsigned = lock_key(group, member) & 0xFFFF_FFFF_FFFF_FFFF
    return {"classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF}


async def is_held(conn: Connection, group: str, member: int) -> bool:
    """Whether a runner holds the member's lock now (looks at pg_locks; takes nothing)."""
    return await (await conn.execute(HOLDER, lock_ids(group, member))).fetchone() is not None


async def holder(conn: Connection, group: str, member: int) -> str:
    """Who holds a member's lock, for messages: application name, address and backend pid."""
    row = await (await conn.execute(HOLDER, lock_ids(group, member))).fetchone()
    if row is None:
        return "holder unknown"
    return f"{row[0] or 'unnamed'} from {row[1]}, backend pid {row[2]}"


async def busy_members(conn: Connection, group: str, members: range) -> list[str]:
    """Members of ``group`` that a runner holds now, described; takes their locks for the rest
    of ``conn``'s transaction, so none can start meanwhile."""
    busy = []
    for member in members:
        row = await (await conn.execute(TRY_XACT_LOCK, {"key": lock_key(group, member)})).fetchone()
        if row is None or not row[0]:
            busy.append(f"member {member} ({await holder(conn, group, member)})")
    return busy


class MemberLock:
    """Holds one member's lock on a connection of its own; use as ``async with``."""

    def __init__(
        self,
        url: str,
        group: str,
        *,
        member: int = 0,
        size: int = 1,
        connect_timeout: float = database.DEFAULT_CONNECT_TIMEOUT,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
    ) -> None:
        self._url = url
        self.group = group
        self.member = member
        self.name = member_name(group, member, size)
        self._connect_timeout = connect_timeout
        self._lease_timeout = lease_timeout
        self._conn: Connection | None = None

    @property
    def watch_interval(self) -> float:
        """Seconds between checks of the session: well within the lease timeout."""
        return min(DEFAULT_WATCH_INTERVAL, self._lease_timeout / 4)

    @property
    def connection(self) -> Connection:
        """The lock's connection (autocommit); checkpoint commits go through it."""
        if self._conn is None:
            raise RuntimeError("the lease is not held")
        return self._conn

    def fence(self) -> LockFence:
        """What a write of this member's must find to pass: its lock, held by its session."""
        return LockFence(self.connection.info.backend_pid, lock_key(self.group, self.member))

    async def __aenter__(self) -> Self:
        self._conn = await self._connect()
        return self

    async def _connect(self) -> Connection:
        application = f"projector {self.name} {socket.gethostname()} pid {os.getpid()}"
        conn = await database.own_session(
            self._url, connect_timeout=self._connect_timeout, application_name=application
        )
        if conn.info.server_version >= IDLE_SESSION_TIMEOUT_SINCE:
            async with database.closed_on_failure(conn, f"closing {self.name}'s lock session"):
                ms = str(max(1, round(self._lease_timeout * 1000)))
                await conn.execute(SET_LEASE_TIMEOUT, {"ms": ms})
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._conn is None:
            return
        with cleanup.shielded(f"releasing {self.name}", cleanup.LEASE_RELEASE):
            # Closing the session releases the lock too, but the server does it a moment after
            # the client has gone: unlocking first means that when a runner has returned, its
            # member is free (an operator's rebalance right after a stop must not be refused).
            try:
                await self._conn.execute(UNLOCK, {"key": lock_key(self.group, self.member)})
            except DatabaseUnavailableError as exc:
                logger.debug(
                    "could not unlock %s before closing its session (closing releases it): %s",
                    self.name,
                    exc,
                    extra={"action": "member_unlock_skipped", "member": self.name},
                )
            await self._conn.close()

    async def acquire(self, *, standby: bool) -> None:
        """Take the member's lock; wait for it as a hot standby, or raise MemberBusyError."""
        await self._acquire(standby=standby)
        logger.info(
            "%s acquired", self.name, extra={"action": "member_acquired", "member": self.name}
        )

    async def _acquire(self, *, standby: bool) -> None:
        conn, waiting = self.connection, False
        # Often enough that a waiting standby's session is never idle for its lease timeout.
        poll = min(DEFAULT_STANDBY_POLL, self._lease_timeout / 4)
        while not await self._try_lock(conn):
            running = await holder(conn, self.group, self.member)
            if not standby:
                raise MemberBusyError(
                    f"{self.name} is already running ({running}): stop it first, "
                    "or start without --no-standby to wait as its hot standby"
                )
            if not waiting:
                waiting = True
                logger.info(
                    "%s is running elsewhere (%s); waiting as its standby",
                    self.name,
                    running,
                    extra={"action": "standby_waiting", "member": self.name, "holder": running},
                )
            await anyio.sleep(poll)

    async def until_lost(self) -> None:
        """Check the lock's session every `watch_interval` s; raise LeaseLostError once it is
        broken (or silent for ``lease_timeout``), which ends the runner's tenure. Cancel to
        stop."""
        while True:
            await anyio.sleep(self.watch_interval)
            try:
                with database.uninterrupted(self._lease_timeout):
                    await self.connection.execute(PING)
            except (DatabaseUnavailableError, TimeoutError) as exc:
                logger.warning(
                    "lost the session holding %s's lock (%s): starting over from the "
                    "committed checkpoints",
                    self.name,
                    database.first_line(exc),
                    extra={"action": "member_lock_lost", "member": self.name},
                )
                raise LeaseLostError(
                    f"lost the session holding {self.name}'s lock: {database.first_line(exc)}"
                ) from exc

    async def _try_lock(self, conn: Connection) -> bool:
        row = await (
            await conn.execute(TRY_LOCK, {"key": lock_key(self.group, self.member)})
        ).fetchone()
        return bool(row and row[0])
