"""Driver errors never leave storage: whichever of its entry points the database goes away
under, what comes out is projector's DatabaseUnavailableError, raised from psycopg's own error
(translated once, by the connection: `projector.storage.database`); a statement the database
refuses is projector's error too. Only user code on a lent connection sees psycopg's errors,
those of its own statements, as it would on any psycopg connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

import projector
from projector import Event, Projection
from projector.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    SchemaMissingError,
    WrongExpectedVersionError,
)
from projector.storage import buckets, database, held, message_store, notify, versions
from projector.storage.buckets import Identity
from projector.storage.checkpoints import Checkpoints
from projector.storage.database import Connection, Pool
from projector.storage.held import HeldStreams
from projector.storage.member_locks import MemberLock
from projector.storage.message_store import MessageStore
from projector.storage.stream_positions import Transactions, session_on
from tests.support.projecting import run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

ME = Identity("boundary", "member-1", "host", 1)
OnConnection = Callable[[Connection], Awaitable[object]]
OnPool = Callable[[Pool], Awaitable[object]]

# Entry points that run on a connection of the caller's (a lease's, a command's).
ON_A_CONNECTION: dict[str, OnConnection] = {
    "checkpoint load": lambda conn: Checkpoints(lambda: conn, "boundary").load("account"),
    "checkpoint commit": lambda conn: Checkpoints(lambda: conn, "boundary").commit({"account": 5}),
    "bucket heartbeat": lambda conn: buckets.heartbeat(conn, ME, lease=5),
    "bucket commit": lambda conn: buckets.commit_fenced(
        conn, ME, size=4, owned={0: 1}, positions={(0, "account"): 5}
    ),
    "bucket release": lambda conn: buckets.leave(conn, ME, {0: 1}),
    "held streams listed": lambda conn: held.list_held(conn, "boundary"),
    "a stream read": lambda conn: message_store.read_stream(conn, "account-1", 0, 10),
    "a message written": lambda conn: message_store.write_message(conn, "account-1", "Seen", {}),
    "the wake-up trigger": notify.installed,
    "the versions": lambda conn: versions.versions(conn, "boundary"),
    "a transactional session": lambda conn: session_on(conn),
}

# Entry points that take a pool connection themselves.
ON_THE_POOL: dict[str, OnPool] = {
    "message store read": lambda pool: MessageStore(pool).read_category("account", 0, 10),
    "held streams look": lambda pool: HeldStreams(pool, "boundary").look(),
    "a transactional call": lambda pool: Transactions(pool).take(),
}


async def _terminate(admin: Connection, pid: int) -> None:
    """End the backend's session, and wait until it is gone (the server ends it a moment after
    it is asked to, and a statement sent meanwhile would still run)."""
    await admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    async def gone() -> bool:
        cursor = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return await cursor.fetchone() is None

    await eventually(gone, within=10)


async def _unavailable(call: Callable[[], Awaitable[object]]) -> DatabaseUnavailableError:
    """The DatabaseUnavailableError ``call`` raises, which psycopg's own error was translated
    into, once (any psycopg error escaping fails the test)."""
    with pytest.raises(DatabaseUnavailableError) as raised:
        await call()
    assert isinstance(raised.value.__cause__, psycopg.Error), raised.value.__cause__
    return raised.value


@pytest.fixture
async def conn(own_store_url: str) -> AsyncIterator[Connection]:
    connection = await database.connect(own_store_url, application_name="boundary")
    await connection.set_autocommit(True)
    async with connection:
        yield connection


@pytest.mark.parametrize("entry", sorted(ON_A_CONNECTION))
async def test_a_session_ended_under_an_entry_point_is_unavailable_not_a_driver_error(
    entry: str, conn: Connection, own_store_conn: Connection
) -> None:
    await _terminate(own_store_conn, conn.info.backend_pid)

    await _unavailable(lambda: ON_A_CONNECTION[entry](conn))
    # Used again, the connection psycopg knows to be closed says so the same way.
    await _unavailable(lambda: ON_A_CONNECTION[entry](conn))


@pytest.mark.parametrize("entry", sorted(ON_THE_POOL))
async def test_a_pool_session_ended_under_an_entry_point_is_unavailable_not_a_driver_error(
    entry: str, own_store_url: str, own_store_conn: Connection
) -> None:
    async with database.open_pool(own_store_url, max_size=1) as pool:
        async with database.pooled(pool, doing="finding its session") as pooled:
            pid = pooled.info.backend_pid
        await _terminate(own_store_conn, pid)

        await _unavailable(lambda: ON_THE_POOL[entry](pool))


async def test_a_lock_session_ended_while_taking_the_lock_is_unavailable(
    own_store_url: str, own_store_conn: Connection
) -> None:
    async with MemberLock(own_store_url, "boundary") as lease:
        await _terminate(own_store_conn, lease.connection.info.backend_pid)

        await _unavailable(lambda: lease.acquire(standby=False))


async def test_a_statement_the_database_refuses_is_projectors_error(
    empty_database_url: str, conn: Connection
) -> None:
    with pytest.raises(DatabaseError, match="LIMIT must not be negative") as refused:
        await message_store.read_stream(conn, "account-1", 0, -1)
    assert isinstance(refused.value.__cause__, psycopg.errors.InvalidRowCountInLimitClause)

    empty = await database.connect(empty_database_url)
    async with empty:
        with pytest.raises(SchemaMissingError, match="projector migrate"):
            await held.list_held(empty, "boundary")
    with pytest.raises(SchemaMissingError, match="projector migrate"):
        notify.install(empty_database_url)  # a blocking connection's, too


async def test_a_refusal_storage_expects_is_still_recognised(conn: Connection) -> None:
    await message_store.write_message(conn, "account-1", "Seen", {})

    with pytest.raises(WrongExpectedVersionError):
        await message_store.write_message(
            conn, "account-1", "Seen", {}, expected_version=5
        )


async def test_user_code_on_a_lent_connection_gets_psycopgs_errors_but_never_a_lost_one(
    conn: Connection, own_store_conn: Connection
) -> None:
    with database.lent(conn), pytest.raises(psycopg.errors.DivisionByZero):
        await conn.execute("SELECT 1 / 0")
    with pytest.raises(DatabaseError):  # given back: projector's statements again
        await conn.execute("SELECT 1 / 0")

    await _terminate(own_store_conn, conn.info.backend_pid)
    with database.lent(conn):
        await _unavailable(lambda: conn.execute("SELECT 1"))


async def test_projectors_public_connection_is_the_users(own_store_url: str) -> None:
    conn = await projector.connect(own_store_url)
    async with conn:
        with pytest.raises(psycopg.errors.UndefinedTable):
            await conn.execute("SELECT * FROM no_such_table")


async def test_a_transactional_handler_catches_its_own_statements_errors(
    own_store_url: str, own_store_conn: Connection
) -> None:
    await own_store_conn.execute("CREATE TABLE seen (stream_name text PRIMARY KEY)")
    await write_events(own_store_url, {"account-1": 3, "account-2": 2})
    duplicates: list[str] = []
    projection = Projection("seen")

    @projection.transactional
    async def handle(stream_name: str, events: list[Event], conn: Connection) -> None:
        for _ in events:
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO seen VALUES (%s)", [stream_name])
            except psycopg.errors.UniqueViolation:
                duplicates.append(stream_name)

    await run_projection(projection, settings_for(own_store_url, categories=("account",)))

    assert sorted(duplicates) == ["account-1", "account-1", "account-2"]
