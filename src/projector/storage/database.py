"""Connections to the database that holds the message store and projector's tables.

Every connection gets ``message_store`` at the end of its ``search_path``: Message DB's
functions call each other by unqualified name, so only its own role finds them without it.
JIT is turned off because the planner's estimates switch it on for every batch read, where it
costs more than it saves.

Driver errors become projector's here, once, on the connection itself: every connection storage
opens (the pool's, `connect`'s, `connect_sync`'s) is a translating one. psycopg runs every round
trip of an open connection through its ``wait`` (a cursor's execute or stream, commit, rollback,
a transaction's begin and end, notifications) and checks that the connection is open before it
makes a cursor; those are the two places the database's errors come from, and where they are
translated (what psycopg raises elsewhere is a misuse of it, a bug: fetching with no result):

- a lost connection (`is_connection_error`, or the connection left broken) becomes
  DatabaseUnavailableError, which runners wait out;
- any other error becomes `refused`'s: SchemaMissingError, PrivilegeError,
  DatabaseUnavailableError for a statement the server could not run then (a deadlock, a lock or
  statement timeout), DatabaseError for the rest.

The driver's error is the translation's ``__cause__``. Storage code that expects a particular
refusal (a unique violation, Message DB's wrong expected version) finds it with `refusal`, which
also finds it raised as psycopg raises it, on a connection that is not translated (the user's
own, or a lent one). The pool's own errors (no connection to be had) are translated where
storage asks it for a connection (`pooled`, `take`). No psycopg error type leaves storage (the
architecture test keeps the driver out of every other package).

The one exception is a connection lent to user code (`lent`): a transactional handler's
connection, `projector.connect`'s, the testing kit's. Its statements' errors reach that code as
psycopg raises them, to be caught as on any psycopg connection; one that escapes a handler is
that handler's failure, for its stream. A lost connection is translated even then: it is no
statement's fault, and the runtime waits it out as an outage.
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn, TypeVar

import anyio
import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq.abc import PGconn
from psycopg.waiting import Ready, Wait
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout, TooManyRequests
from psycopg_pool.pool_async import AddConnection, MaintenanceTask

from projector import cleanup
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
E = TypeVar("E", bound=BaseException)

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


class TranslatingConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
    """An async connection whose driver errors are projector's (see the module's docstring),
    unless it is `lent`."""

    lent = False  # set by `lent` while user code holds the connection

    async def wait(self, gen: PQGen[T], *args: Any, **kwargs: Any) -> T:
        try:
            return await super().wait(gen, *args, **kwargs)
        except psycopg.errors._WaitTimeout:
            raise  # not an error: psycopg's own signal, to itself, that a timed wait ended
        except psycopg.Error as exc:
            _raise_translated(exc, broken=self.broken, lent=self.lent)

    def _check_connection_ok(self) -> None:
        # psycopg's check before it makes a cursor: a connection lost earlier says so here.
        try:
            super()._check_connection_ok()
        except psycopg.Error as exc:
            _raise_translated(exc, broken=self.broken, lent=self.lent)


class TranslatingSyncConnection(psycopg.Connection[tuple[Any, ...]]):
    """A blocking connection whose driver errors are projector's, for one-off commands."""

    def wait(self, gen: PQGen[T], *args: Any, **kwargs: Any) -> T:
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.errors._WaitTimeout:
            raise
        except psycopg.Error as exc:
            _raise_translated(exc, broken=self.broken, lent=False)

    def _check_connection_ok(self) -> None:
        try:
            super()._check_connection_ok()
        except psycopg.Error as exc:
            _raise_translated(exc, broken=self.broken, lent=False)


def _raise_translated(exc: psycopg.Error, *, broken: bool, lent: bool) -> NoReturn:
    translation = translated(exc, broken=broken, lent=lent)
    if translation is None:
        raise exc
    raise translation from exc


class EagerConnection(TranslatingConnection):
    """A translating connection that takes data already waiting in its socket at once.

    libpq reads a result at most a buffer (about 16 kB) at a time, so a batch of 500 events
    takes five or more reads, and psycopg sends every one of them through the event loop (a
    reader registered, a future, a loop iteration, the reader removed), even when the data is
    already there, as it usually is once the loop has been busy running handlers while the
    server answered. A zero-timeout poll after each wait costs far less than a loop trip, and
    a batch then usually takes one or two of them.
    """

    async def wait(self, gen: PQGen[T], *args: Any, **kwargs: Any) -> T:
        return await super().wait(_eagerly(gen, self.pgconn), *args, **kwargs)


def _eagerly(gen: PQGen[T], pgconn: PGconn) -> PQGen[T]:
    """``gen``, fed directly with what the socket holds already, after each wait through the
    loop, up to EAGER_READS times in a row (so that a long result cannot keep the loop from
    other tasks). Never before the first wait: the answer to a statement just sent is not
    there yet, and a short result needs no second read. (The socket is looked up only then,
    inside the wait, where a connection lost meanwhile is translated.)"""
    poller: select.poll | None = None
    try:
        wanted = next(gen)
        while True:
            wanted = gen.send((yield wanted))
            reads = 0
            while wanted == Wait.R and reads < EAGER_READS:
                if poller is None:
                    poller = select.poll()
                    poller.register(pgconn.socket, select.POLLIN)
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


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailableError:
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
    that failed (a deadlock, a timeout, a constraint, a bug). A DatabaseUnavailableError always
    counts: it also stands for a statement of projector's that the server could not run then
    (see `translated`), which is no event's fault either."""
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


STATEMENT = "running a statement"  # what a connection was doing, as far as it knows


def translated(
    exc: psycopg.Error, *, broken: bool = False, lent: bool = False
) -> ProjectorError | None:
    """What a translating connection raises for a driver error (None: psycopg's own error goes
    on, a statement's refusal on a `lent` connection). ``broken``: the error left the
    connection unusable, whatever it says."""
    if broken or _is_lost_connection(exc):
        return unavailable_during(STATEMENT, exc)
    if lent:
        return None
    return refused(exc, STATEMENT)


def refusal(error: BaseException, kind: type[E] | tuple[type[E], ...]) -> E | None:
    """The driver's error of ``kind`` that ``error`` is, or was translated from (its cause);
    None when neither. How storage recognises a refusal it expects, whether the connection
    translated it or not (a lent one, or the user's own)."""
    for candidate in (error, error.__cause__):
        if isinstance(candidate, kind):
            return candidate
    return None


@contextmanager
def lent(conn: Connection) -> Iterator[Connection]:
    """``conn`` lent to user code (a handler, an operator's query) for the block: the errors
    of its statements reach that code as psycopg raises them (see the module's docstring).
    Any other connection (the user's own) is left as it is."""
    if not isinstance(conn, TranslatingConnection) or conn.lent:
        yield conn
        return
    conn.lent = True
    try:
        yield conn
    finally:
        conn.lent = False


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


# What the pool itself raises when it has no connection to give.
_POOL_ERRORS = (PoolTimeout, PoolClosed, TooManyRequests)


@asynccontextmanager
async def pooled(pool: Pool, *, doing: str) -> AsyncIterator[Connection]:
    """A pool connection; no connection to be had becomes DatabaseUnavailableError, which
    outages are retried on (the connection translates its own errors)."""
    try:
        async with pool.connection() as conn:
            yield conn
    except _POOL_ERRORS as exc:
        raise unavailable_during(doing, exc) from exc


async def take(pool: Pool, *, doing: str) -> Connection:
    """A pool connection to give back with ``pool.putconn``, as `pooled` gives one."""
    try:
        return await pool.getconn()
    except _POOL_ERRORS as exc:
        raise unavailable_during(doing, exc) from exc


async def own_session(url: str, *, connect_timeout: float, application_name: str) -> Connection:
    """A connection of its own, in autocommit, for what lives on one session (a member's lock,
    an elastic membership); its application name says whose it is in pg_stat_activity."""
    conn = await connect(url, connect_timeout=connect_timeout, application_name=application_name)
    async with closed_on_failure(conn, f"closing the session of {application_name}"):
        await conn.set_autocommit(True)
    return conn


@asynccontextmanager
async def closed_on_failure(conn: Connection, doing: str) -> AsyncIterator[Connection]:
    """``conn``, closed (shielded, time-boxed) if the block fails, so that a session set up
    halfway is not left open; the failure goes on."""
    try:
        yield conn
    except BaseException:
        with cleanup.shielded(doing, cleanup.LEASE_RELEASE):
            await conn.close()
        raise


async def probe(url: str, *, connect_timeout: float) -> None:
    """Raise DatabaseUnavailableError unless a new connection to ``url`` answers a query (the
    session settings `connect` sends are that query)."""
    conn = await connect(url, connect_timeout=connect_timeout, application_name="projector probe")
    await conn.close()


def connect_sync(url: str, *, translating: bool = True) -> SyncConnection:
    """A plain blocking connection, for one-off commands (migrations, installs); not
    ``translating`` for SQLAlchemy, which wraps psycopg's errors itself (see `migrate`)."""
    kind = TranslatingSyncConnection if translating else psycopg.Connection
    try:
        return kind.connect(url, connect_timeout=math.ceil(DEFAULT_CONNECT_TIMEOUT))
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
    return await _connect(url, connect_timeout=connect_timeout, application_name=application_name)


async def connect_lent(
    url: str,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    application_name: str = "projector",
) -> Connection:
    """One configured connection for the user's own statements (`projector.connect`): lent for
    its whole life, its statements' errors are psycopg's (see `lent`)."""
    conn = await _connect(url, connect_timeout=connect_timeout, application_name=application_name)
    conn.lent = True
    return conn


async def _connect(
    url: str, *, connect_timeout: float, application_name: str
) -> TranslatingConnection:
    try:
        conn = await TranslatingConnection.connect(
            url,
            connect_timeout=max(1, math.ceil(connect_timeout)),
            application_name=application_name,
        )
    except psycopg.OperationalError as exc:
        raise unavailable(url, exc) from exc
    try:
        await configure(conn)
    except DatabaseUnavailableError as exc:
        # The session ended as soon as it began (a restart, a terminated backend).
        await conn.close()
        raise unavailable(url, exc.__cause__ or exc) from exc
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
