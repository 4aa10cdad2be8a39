"""Connections to the database that holds the message store and projector's tables.

Every connection gets ``message_store`` at the end of its ``search_path``: Message DB's
functions call each other by unqualified name, so only its own role finds them without it.
JIT is turned off because the planner's estimates switch it on for every batch read, where it
costs more than it saves.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import anyio
import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.waiting import Ready, Wait
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from psycopg_pool.pool_async import AddConnection, MaintenanceTask

from projector.errors import (
    DatabaseError,
    DatabaseLoginError,
    DatabaseUnavailableError,
    PrivilegeError,
    ProjectorError,
    SchemaMissingError,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

# message_store goes last: Message DB's functions find each other there, while tables that
# handlers create or use unqualified still land where the connection's own path says (public).
SESSION_SETTINGS = """
SELECT set_config('jit', 'off', false),
       CASE WHEN 'message_store' = ANY (current_schemas(false)) THEN NULL
            ELSE set_config('search_path', current_setting('search_path') || ', message_store',
                            false)
       END
"""
DEFAULT_CONNECT_TIMEOUT = 10.0
EAGER_READS = 64  # reads of data already in the socket before a wait goes through the loop

Connection = psycopg.AsyncConnection[tuple[Any, ...]]
Pool = AsyncConnectionPool[Connection]
SyncConnection = psycopg.Connection[tuple[Any, ...]]


class EagerConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
    """An async connection that takes data already waiting in its socket at once.

    libpq reads a result at most a buffer (about 16 kB) at a time, so a batch of 500 events
    takes five or more reads, and psycopg sends every one of them through the event loop (a
    reader registered, a future, a loop iteration, the reader removed), even when the data is
    already there, as it usually is once the loop has been busy running handlers while the
    server answered. A zero-timeout poll after each wait costs far less than a loop trip, and
    a batch then usually takes one or two of them.
    """

    async def wait(self, gen: PQGen[T], *args: Any, **kwargs: Any) -> T:
        return await super().wait(_eagerly(gen, self.pgconn.socket), *args, **kwargs)


def _eagerly(gen: PQGen[T], fileno: int) -> PQGen[T]:
    """``gen``, fed directly with what the socket holds already, after each wait through the
    loop, up to EAGER_READS times in a row (so that a long result cannot keep the loop from
    other tasks). Never before the first wait: the answer to a statement just sent is not
    there yet, and a short result needs no second read."""
    poller: select.poll | None = None
    try:
        wanted = next(gen)
        while True:
            wanted = gen.send((yield wanted))
            reads = 0
            while wanted == Wait.R and reads < EAGER_READS:
                if poller is None:
                    poller = select.poll()
                    poller.register(fileno, select.POLLIN)
                if not poller.poll(0):
                    break
                wanted = gen.send(Ready.R)
                reads += 1
    except StopIteration as done:
        result: T = done.value
        return result


def describe(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    host = params.get("host") or "localhost"
    user, port, dbname = params.get("user") or "", params.get("port") or 5432, params.get("dbname")
    return f"{user}@{host}:{port}/{dbname or ''}"


def first_line(exc: BaseException) -> str:
    """A driver error's message on one line (libpq's often run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unavailable(url: str, exc: Exception) -> DatabaseUnavailableError:
    """The one error users see for a database that is down, unreachable or refuses us: a
    DatabaseLoginError when the URL itself cannot work (see `cannot_work`)."""
    kind = DatabaseLoginError if cannot_work(exc) else DatabaseUnavailableError
    return kind(
        f"cannot connect to the database {describe(url)}: {first_line(exc)} "
        "(check --database-url / PROJECTOR_DATABASE_URL and that the server is running)"
    )


# What libpq and the server say when a connection can never succeed as asked. libpq reports no
# SQLSTATE for a failed connection, so its text is all there is; the server's messages are
# those of lc_messages C (English). A message not recognised counts as passing (the server
# starting up, shutting down, refusing connections, too many clients): waited for, not fatal.
_CANNOT_WORK = (
    "could not translate host name",  # libpq: the host name does not resolve
    "failed to resolve host",  # psycopg's own resolver, for async connections
    "Name or service not known",
    "nodename nor servname provided",
    "password authentication failed",  # 28P01
    "no password supplied",
    "does not exist",  # role or database (28000, 3D000)
    "no pg_hba.conf entry",
    "authentication failed",  # peer, ident, SCRAM
)


def cannot_work(exc: BaseException) -> bool:
    """Whether a failed connection says the URL cannot work as given (an unknown host, a
    refused login), rather than that the server is away for now."""
    text = str(exc)
    return any(reason in text for reason in _CANNOT_WORK)


# SQLSTATE classes and codes that mean the session, not the statement, failed.
_CONNECTION_CLASS = "08"  # connection exception
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, cannot connect


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error``, or an exception it was raised from, is a lost or refused connection
    (of psycopg, of the pool, of projector, or an OS-level one), as opposed to a statement
    that failed (a deadlock, a timeout, a constraint, a bug)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_lost_connection(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_lost_connection(error: BaseException) -> bool:
    if isinstance(error, DatabaseUnavailableError | PoolTimeout | ConnectionError):
        return True
    if isinstance(error, psycopg.OperationalError):
        state = error.sqlstate
        # No SQLSTATE: libpq's own "connection lost / refused / closed".
        return state is None or state.startswith(_CONNECTION_CLASS) or state in _SESSION_ENDED
    return False


_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
)


def refused(exc: psycopg.Error, doing: str) -> ProjectorError:
    """The one error users see for a statement of projector's the database did not run: what
    was refused, why (on one line), and what to do."""
    reason = first_line(exc)
    if isinstance(exc, _MISSING):
        return SchemaMissingError(
            f"{reason} (while {doing}): run `projector migrate` first (with --message-store "
            "if the database has no message store yet)"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return PrivilegeError(
            f"the database refused {doing}: {reason}; grant the role what projector's docs "
            "list under 'Privileges and connections'"
        )
    if isinstance(exc, psycopg.OperationalError):
        return unavailable_during(doing, exc)
    return DatabaseError(f"the database refused {doing}: {reason}")


def unavailable_during(doing: str, exc: Exception) -> DatabaseUnavailableError:
    """The error for a connection that failed mid-run."""
    return DatabaseUnavailableError(f"lost the database while {doing}: {first_line(exc)}")


@contextmanager
def unavailable_as(doing: str) -> Iterator[None]:
    """The database going away inside the block becomes DatabaseUnavailableError."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise unavailable_during(doing, exc) from exc


@contextmanager
def uninterrupted(timeout: float) -> Iterator[None]:
    """Let the round trips in the block finish though their task is cancelled, for at most
    ``timeout`` seconds (then TimeoutError).

    For a connection that a stopping runner still needs (its last commit, releasing its
    buckets or its lock): cancelling psycopg mid-query closes the connection, since under
    anyio the cancellation also interrupts psycopg's request to cancel the query.
    """
    with anyio.CancelScope(shield=True), anyio.fail_after(timeout):
        yield


def url_ports(value: str) -> list[str]:
    """The ports a libpq URL or key=value string names (none when it names none)."""
    port = conninfo_to_dict(value).get("port")
    return [part.strip() for part in str(port).split(",")] if port else []


def is_connection_string(value: str) -> bool:
    """Whether libpq accepts ``value`` as a URL or key=value settings."""
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError:
        return False
    return True


@asynccontextmanager
async def pooled(pool: Pool, *, doing: str) -> AsyncIterator[Connection]:
    """A pool connection; the database going away (or no connection to be had) while it is
    used becomes DatabaseUnavailableError, which outages are retried on."""
    try:
        async with pool.connection() as conn:
            yield conn
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise unavailable_during(doing, exc) from exc


async def probe(url: str, *, connect_timeout: float) -> None:
    """Raise DatabaseUnavailableError unless a new connection to ``url`` answers a query (the
    session settings `connect` sends are that query)."""
    try:
        conn = await connect(
            url, connect_timeout=connect_timeout, application_name="projector probe"
        )
    except psycopg.OperationalError as exc:  # connect wraps only a refused connection
        raise unavailable(url, exc) from exc
    await conn.close()


def connect_sync(url: str) -> SyncConnection:
    """A plain blocking connection, for one-off commands (migrations, installs)."""
    try:
        return psycopg.connect(url, connect_timeout=math.ceil(DEFAULT_CONNECT_TIMEOUT))
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc


async def configure(conn: Connection) -> None:
    await conn.execute(SESSION_SETTINGS)
    await conn.commit()


async def connect(
    url: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    application_name: str = "projector",
) -> Connection:
    """One configured connection, outside any pool (for locks and one-off commands)."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            url,
            connect_timeout=max(1, math.ceil(connect_timeout)),
            application_name=application_name,
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc
    try:
        await configure(conn)
    except psycopg.OperationalError as exc:
        # The session ended as soon as it began (a restart, a terminated backend).
        await conn.close()
        raise unavailable(url, exc) from exc
    return conn


class RevivingPool(AsyncConnectionPool[Connection]):
    """A pool whose connection attempts, put off by its own backoff, can be made at once.

    After a connection fails, psycopg_pool tries again 1, 2, 4, 8 ... seconds later, so after
    an outage of a few seconds its next attempt can come seconds after the server is back, and
    every caller waits for it. projector probes the database itself (`runtime.outage`), more
    often; once a probe finds it back, `reconnect_now` makes the attempts that were put off.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._put_off: set[AddConnection] = set()

    async def schedule_task(self, task: MaintenanceTask, delay: float) -> None:
        if not isinstance(task, AddConnection):
            await super().schedule_task(task, delay)
            return
        # The pool counts the connection it is adding from now on (its ``_nconns``): the
        # attempt must run exactly once, at its time or at `reconnect_now`, whichever is first.
        self._put_off.add(task)
        await super().schedule_task(_WhenDue(self, task), delay)

    def reconnect_now(self) -> None:
        """Make every connection attempt that the pool's backoff has put off, now."""
        due, self._put_off = self._put_off, set()
        for task in due:
            self.run_task(task)

    def take_due(self, task: AddConnection) -> bool:
        """Whether ``task`` is still put off (and is now taken out to run)."""
        if task not in self._put_off:
            return False
        self._put_off.discard(task)
        return True


class _WhenDue(MaintenanceTask):
    """An attempt put off by the pool's backoff, run when its time comes unless `reconnect_now`
    ran it already."""

    def __init__(self, pool: RevivingPool, task: AddConnection) -> None:
        super().__init__(pool)
        self.task = task

    async def _run(self, pool: AsyncConnectionPool[Any]) -> None:
        if isinstance(pool, RevivingPool) and pool.take_due(self.task):
            await self.task.run()


async def _opened_pool(url: str, *, max_size: int, connect_timeout: float) -> RevivingPool:
    # A direct connection first: the pool would only report a timeout, not why it failed. If
    # the server goes away between the two (a restart), the probe is made again and says so.
    retried = False
    while True:
        probe = await connect(url, connect_timeout=connect_timeout)
        await probe.close()
        pool = RevivingPool(
            url,
            min_size=1,
            max_size=max_size,
            configure=configure,
            connection_class=EagerConnection,
            # Autocommit: a read is one round trip, with no BEGIN before it and no COMMIT
            # after; code that needs a transaction asks for one (conn.transaction()).
            kwargs={"autocommit": True},
            open=False,
            timeout=connect_timeout,
            name="projector",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout as exc:
            await pool.close()
            if retried:
                raise unavailable(url, exc) from exc
            retried = True
            continue
        return pool


@asynccontextmanager
async def open_pool(
    url: str, *, max_size: int, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
) -> AsyncIterator[RevivingPool]:
    """A pool of configured connections; a bad URL or a down server fails here, clearly."""
    pool = await _opened_pool(url, max_size=max_size, connect_timeout=connect_timeout)
    try:
        yield pool
    finally:
        await pool.close()
