"""What a runner decides when a handler call fails, with a scripted database probe and a
recording held-streams table, no database: an outage is waited out without an attempt, a lost
connection is never held, a failing stream is recorded as retrying and held out of the read
path until its retries run out into a park, the ``stop`` policy keeps it in place, and a hold
that cannot be written becomes a wait for the database."""

from __future__ import annotations

import psycopg
import pytest

from projector.errors import DatabaseUnavailableError
from projector.model.events import Event
from projector.model.failures import Hold, OnExhausted, Retry, RetryPolicy, RetryWhen, Stop
from projector.runtime.failure_decisions import FailureDecisions
from projector.runtime.outage import Outage
from tests.support.sink import ev

pytestmark = pytest.mark.anyio


class Database:
    def __init__(self, *, up: bool) -> None:
        self.up = up

    async def probe(self) -> None:
        if not self.up:
            raise DatabaseUnavailableError("connection refused")


class Held:
    """Stands for `HeldStreams`: records what is held (stream, first position, attempts and
    the delay of its retry, None when parked), or fails for want of the database."""

    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.held: list[tuple[str, int, int, float | None]] = []

    async def hold(
        self,
        stream_name: str,
        first: Event,
        error: BaseException,
        *,
        attempts: int,
        retry_in: float | None,
    ) -> None:
        if not self.reachable:
            raise DatabaseUnavailableError("connection refused")
        self.held.append((stream_name, first.position, attempts, retry_in))


def decisions(
    database: Database,
    held: Held,
    *,
    max_attempts: int = 3,
    on_exhausted: OnExhausted = OnExhausted.PARK,
) -> FailureDecisions:
    return FailureDecisions(
        RetryPolicy(base=0.01, cap=0.05, max_attempts=max_attempts, on_exhausted=on_exhausted),
        held,  # type: ignore[arg-type]
        Outage(database.probe, limit=60),
        group="balances",
    )


LOST = psycopg.OperationalError("server closed the connection unexpectedly")


async def test_a_lost_connection_while_the_database_is_away_waits_for_it() -> None:
    held = Held()
    decision = await decisions(Database(up=False), held).on_failure(
        "account-1", [ev("account-1", 0)], LOST, attempt=1
    )

    assert isinstance(decision, RetryWhen)
    assert held.held == []


async def test_a_lost_connection_while_the_database_answers_is_retried_and_never_held() -> None:
    held = Held()
    decision = await decisions(Database(up=True), held, max_attempts=1).on_failure(
        "account-1", [ev("account-1", 0)], LOST, attempt=50
    )

    assert isinstance(decision, Retry)
    assert decision.delay <= 5.0
    assert held.held == []


async def test_a_failing_stream_is_held_as_retrying_then_parked_once_retries_run_out() -> None:
    held = Held()
    failing = decisions(Database(up=True), held, max_attempts=3)
    events = [ev("account-1", 4), ev("account-1", 5)]

    early = await failing.on_failure("account-1", events, ValueError("bad"), attempt=2)
    last = await failing.on_failure("account-1", events, ValueError("bad"), attempt=3)

    assert isinstance(early, Hold)
    assert isinstance(last, Hold)
    [(stream, position, attempts, retry_in), parked] = held.held
    assert (stream, position, attempts) == ("account-1", 4, 2)
    assert retry_in is not None
    assert 0 <= retry_in <= 0.02
    assert parked == ("account-1", 4, 3, None)


async def test_under_the_stop_policy_a_failing_stream_retries_in_place_then_stops() -> None:
    held = Held()
    failing = decisions(Database(up=True), held, max_attempts=2, on_exhausted=OnExhausted.STOP)
    events = [ev("account-1", 0)]

    early = await failing.on_failure("account-1", events, ValueError("bad"), attempt=1)
    last = await failing.on_failure("account-1", events, ValueError("bad"), attempt=2)

    assert isinstance(early, Retry)
    assert isinstance(last, Stop)
    assert held.held == []


async def test_a_hold_the_database_cannot_take_becomes_a_wait_for_it() -> None:
    failing = decisions(Database(up=False), Held(reachable=False), max_attempts=1)

    decision = await failing.on_failure(
        "account-1", [ev("account-1", 0)], ValueError("bad"), attempt=1
    )

    assert isinstance(decision, RetryWhen)
