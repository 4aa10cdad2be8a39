"""What a runner decides when a handler call fails, with a scripted database probe and a
recording parked-streams table, no database: an outage is waited out without an attempt, a lost
connection is never parked, retries run out into a park, and a park that cannot be written
becomes a retry."""

from __future__ import annotations

import psycopg
import pytest

from projector.errors import DatabaseUnavailableError
from projector.model.failures import Park, Retry, RetryPolicy, RetryWhen
from projector.runtime.outage import Outage
from projector.runtime.recovery import Recovery
from tests.support.sink import ev

pytestmark = pytest.mark.anyio


class Database:
    def __init__(self, *, up: bool) -> None:
        self.up = up

    async def probe(self) -> None:
        if not self.up:
            raise DatabaseUnavailableError("connection refused")


class Parked:
    """Stands for `ParkedStreams`: records what is parked, or fails for want of the database."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.parked: list[tuple[str, int, int]] = []

    async def park(
        self, stream_name: str, events: list[object], error: BaseException, attempts: int
    ) -> None:
        if not self.reachable:
            raise DatabaseUnavailableError("connection refused")
        self.parked.append((stream_name, len(events), attempts))


def recovery(database: Database, parked: Parked, *, max_attempts: int = 3) -> Recovery:
    async def unused(stream_name: str, events: list[object]) -> int:
        raise AssertionError("no replay here")

    return Recovery(
        RetryPolicy(base=0.01, cap=0.05, max_attempts=max_attempts),
        parked,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        unused,  # type: ignore[arg-type]
        Outage(database.probe, limit=60),
        group="balances",
        batch_size=100,
        handler_timeout=None,
    )


LOST = psycopg.OperationalError("server closed the connection unexpectedly")


async def test_a_lost_connection_while_the_database_is_away_waits_for_it() -> None:
    decision = await recovery(Database(up=False), Parked()).on_failure(
        "account-1", [ev("account-1", 0)], LOST, attempt=1
    )

    assert isinstance(decision, RetryWhen)


async def test_a_lost_connection_while_the_database_answers_is_retried_and_never_parked() -> None:
    parked = Parked()
    decision = await recovery(Database(up=True), parked, max_attempts=1).on_failure(
        "account-1", [ev("account-1", 0)], LOST, attempt=50
    )

    assert isinstance(decision, Retry)
    assert decision.delay <= 5.0
    assert parked.parked == []


async def test_a_stream_that_keeps_failing_is_parked_once_retries_run_out() -> None:
    parked = Parked()
    failing = recovery(Database(up=True), parked, max_attempts=3)
    events = [ev("account-1", 0), ev("account-1", 1)]

    early = await failing.on_failure("account-1", events, ValueError("bad"), attempt=2)
    last = await failing.on_failure("account-1", events, ValueError("bad"), attempt=3)

    assert isinstance(early, Retry)
    assert isinstance(last, Park)
    assert parked.parked == [("account-1", 2, 3)]


async def test_a_park_the_database_cannot_take_becomes_a_wait_for_it() -> None:
    failing = recovery(Database(up=False), Parked(reachable=False), max_attempts=1)

    decision = await failing.on_failure(
        "account-1", [ev("account-1", 0)], ValueError("bad"), attempt=1
    )

    assert isinstance(decision, RetryWhen)
