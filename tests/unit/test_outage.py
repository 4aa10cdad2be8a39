"""Outages as failing handler calls see them: which errors are lost connections, and how an
outage is found, shared, waited for and ended. The probe is a scripted one: no database."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import psycopg
import psycopg.errors
import pytest
from psycopg_pool import PoolTimeout

from projector.errors import DatabaseUnavailableError
from projector.pipeline.observe import Observer
from projector.runtime.outage import Outage, is_connection_error

pytestmark = pytest.mark.anyio


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("the handler's own wrapper") from exc
    except RuntimeError as wrapped:
        return wrapped


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
        psycopg.errors.ConnectionFailure("connection failure"),
        PoolTimeout("couldn't get a connection after 10 s"),
        DatabaseUnavailableError("lost the database while reading"),
        ConnectionRefusedError(111, "Connection refused"),
        _raised_from(psycopg.OperationalError("connection is lost")),
    ],
    ids=lambda error: type(error).__name__,
)
def test_lost_and_refused_connections_are_connection_errors(error: BaseException) -> None:
    assert is_connection_error(error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        ValueError("a bug"),
        _raised_from(KeyError("amount")),
    ],
    ids=lambda error: type(error).__name__,
)
def test_failed_statements_and_bugs_are_not_connection_errors(error: BaseException) -> None:
    assert not is_connection_error(error)


@dataclass
class Database:
    """A probe target: answers while ``up``; counts the probes."""

    up: bool = True
    probes: int = 0

    async def probe(self) -> None:
        self.probes += 1
        await anyio.sleep(0.01)
        if not self.up:
            raise DatabaseUnavailableError("connection refused")


@dataclass
class Seen(Observer):
    outages: list[str] = field(default_factory=list)

    def outage_started(self) -> None:
        self.outages.append("started")

    def outage_ended(self, seconds: float) -> None:
        self.outages.append(f"ended after {seconds >= 0.1}")


async def test_an_outage_found_by_many_failing_calls_is_probed_once_and_ends_when_it_answers() -> (
    None
):
    database, seen = Database(up=False), Seen()
    outage = Outage(database.probe, limit=30, probe_interval=0.02, observer=seen)
    found: list[bool] = []

    async def confirm() -> None:
        found.append(await outage.confirm())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as callers:
            for _ in range(50):
                callers.start_soon(confirm)
        assert found == [True] * 50
        assert database.probes == 1
        assert outage.ongoing
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outage.probe_while_away)

            await anyio.sleep(0.1)
            database.up = True
            await outage.wait_until_back()
            assert not outage.ongoing
            tasks.cancel_scope.cancel()

    assert seen.outages == ["started", "ended after True"]


async def test_a_database_that_answers_is_not_probed_again_at_once() -> None:
    database = Database(up=True)
    outage = Outage(database.probe, limit=30)

    assert not await outage.confirm()
    assert not await outage.confirm()
    assert database.probes == 1
    await outage.wait_until_back()  # no outage: returns at once


async def test_an_outage_longer_than_the_limit_ends_the_run() -> None:
    outage = Outage(Database(up=False).probe, limit=0.1, probe_interval=0.02)
    assert await outage.confirm()

    with anyio.fail_after(5), pytest.raises(DatabaseUnavailableError, match="outage_limit"):
        await outage.probe_while_away()


async def test_a_retry_waits_for_the_probe_to_find_the_database_back_which_revives_the_pool() -> (
    None
):
    database, revived = Database(up=False), []
    outage = Outage(
        database.probe, limit=30, probe_interval=0.02, on_back=lambda: revived.append(True)
    )

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(outage.probe_while_away)
            retrying = anyio.Event()

            async def retry() -> None:
                await outage.retry_after(600)  # the operation's own backoff: not waited out
                retrying.set()

            tasks.start_soon(retry)
            await anyio.sleep(0.1)
            assert not retrying.is_set()
            assert revived == []
            database.up = True
            await retrying.wait()
            tasks.cancel_scope.cancel()

    assert revived == [True]


async def test_a_retry_while_the_database_answers_takes_the_operations_own_backoff() -> None:
    outage = Outage(Database(up=True).probe, limit=30)

    started = anyio.current_time()
    await outage.retry_after(0.2)

    assert anyio.current_time() - started >= 0.2
