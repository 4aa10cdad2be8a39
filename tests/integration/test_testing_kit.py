"""The testing kit on real Postgres: each kind of projection run until caught up, dependent
ones included; the idempotence and determinism checks passing and failing where they should;
a crash that re-delivers what the checkpoint had not passed; failing streams retried and
parked."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from projector import (
    Column,
    ConfigurationError,
    Dependency,
    Event,
    GuardedUpsert,
    MessageStoreError,
    Projection,
    WrongExpectedVersionError,
    connect,
)
from projector.storage.database import Connection
from projector.testing import (
    Database,
    assert_deterministic,
    assert_idempotent,
    assert_parked,
    assert_retried,
    call_handler,
    event,
    run_until_caught_up,
    run_with_crash,
)

pytestmark = pytest.mark.anyio

TABLE = """
CREATE TABLE balances (stream_name text PRIMARY KEY, position bigint NOT NULL DEFAULT -1,
                       balance bigint NOT NULL, events bigint NOT NULL)
"""
# Adds each call's amounts to its stream's row: right only if each event is applied once.
ADD = """
INSERT INTO balances AS b (stream_name, balance, events) VALUES (%(stream)s, %(delta)s, %(count)s)
ON CONFLICT (stream_name) DO UPDATE SET balance = b.balance + EXCLUDED.balance,
                                        events = b.events + EXCLUDED.events
"""
BALANCES = "SELECT stream_name, balance, events FROM balances"


def amount(e: Event) -> int:
    value = int(e.data["amount"])
    return -value if e.type == "Withdrawn" else value


# Idempotent: the row keeps the position of the last event it applied.
GUARDED = GuardedUpsert(
    "balances",
    add={"balance": Column("bigint", amount), "events": Column("bigint", lambda e: 1)},
)
FIRST = [
    event("Deposited", stream="account-1", amount=5),
    event("Withdrawn", stream="account-1", amount=2),
    event("Deposited", stream="account-2", amount=7),
]
THEN = [event("Deposited", stream="account-1", amount=10)]
EXPECTED = """\
stream_name | balance | events
account-1   | 13      | 3
account-2   | 7       | 1
"""


async def add(conn: Connection, stream_name: str, events: list[Event], *, count: int = 0) -> None:
    delta = sum(amount(e) for e in events)
    await conn.execute(ADD, {"stream": stream_name, "delta": delta, "count": count or len(events)})


Maker = Callable[[str], Projection]


def at_least_once(url: str) -> Projection:
    """A stream handler adding on a connection of its own: not idempotent."""
    projection = Projection("adding", categories=["account"])

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> None:
        async with await connect(url) as conn:
            await add(conn, stream_name, events)

    return projection


def guarded(url: str) -> Projection:
    """A stream handler writing guarded rows on a connection of its own: idempotent."""
    projection = Projection("guarded", categories=["account"])

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> None:
        async with await connect(url) as conn:
            await GUARDED.execute(conn, {stream_name: events})

    return projection


def bulk(url: str) -> Projection:
    projection = Projection("bulk", categories=["account"])

    @projection.batch
    async def handle(spans: dict[str, list[Event]]) -> None:
        async with await connect(url) as conn:
            for stream_name, events in spans.items():
                await add(conn, stream_name, events)

    return projection


def exactly_once(url: str) -> Projection:
    """A transactional handler adding amounts: exactly once, through projector's positions."""
    projection = Projection("exact", categories=["account"])

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None:
        await add(conn, stream_name, events)

    return projection


def exactly_once_batch(url: str) -> Projection:
    projection = Projection("exact_batch", categories=["account"])

    @projection.transactional_batch
    async def apply(spans: dict[str, list[Event]], conn: Connection) -> None:
        for stream_name, events in spans.items():
            await add(conn, stream_name, events)

    return projection


def guarded_batch(url: str) -> Projection:
    projection = Projection("guarded_batch", categories=["account"])

    @projection.transactional_batch(positions="read_model")
    async def apply(spans: dict[str, list[Event]], conn: Connection) -> None:
        await GUARDED.execute(conn, spans)

    return projection


def counting_calls(url: str) -> Projection:
    """Counts handler calls, not events: its read model depends on how events were batched."""
    projection = Projection("calls", categories=["account"])

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None:
        await add(conn, stream_name, events, count=1)

    return projection


KINDS: dict[str, Maker] = {
    "handler": at_least_once,
    "batch": bulk,
    "transactional": exactly_once,
    "transactional_batch": exactly_once_batch,
    "transactional_batch-read_model": guarded_batch,
}


async def state_nothing(e: Event) -> None:
    """A handler with nothing to do."""


@pytest.fixture
async def db(projector_db: Database) -> Database:
    await projector_db.execute(TABLE)
    return projector_db


@pytest.mark.parametrize("kind", KINDS)
async def test_every_kind_of_projection_runs_until_it_has_handled_every_event_written(
    db: Database, kind: str
) -> None:
    projection = KINDS[kind](db.url)

    await db.write(*FIRST)
    await run_until_caught_up(projection, db)
    await db.write(*THEN)
    run = await run_until_caught_up(projection, db, batch_size=2)

    assert await db.snapshot(BALANCES) == EXPECTED
    assert run.failures == ()


async def test_dependent_projections_run_each_after_those_it_depends_on(db: Database) -> None:
    await db.execute("CREATE TABLE statements (invoice text PRIMARY KEY, balance bigint)")
    accounts = exactly_once(db.url)
    statements = Projection("statements", categories=["invoice"], depends_on=[Dependency("exact")])

    @statements.transactional
    async def state(stream_name: str, events: list[Event], conn: Connection) -> None:
        await conn.execute(
            "INSERT INTO statements SELECT %s, balance FROM balances WHERE stream_name = %s",
            (stream_name, events[-1].data["account"]),
        )

    await db.write(*FIRST, event("Issued", stream="invoice-1", account="account-1"))
    with pytest.raises(ConfigurationError, match="depends on exact: run it together"):
        await run_until_caught_up(statements, db)
    nowhere = Projection("nowhere")
    nowhere.on("Issued")(state_nothing)
    with pytest.raises(ConfigurationError, match="'nowhere' reads no category"):
        await run_until_caught_up(nowhere, db)
    await run_until_caught_up([statements, accounts], db)

    assert await db.snapshot("SELECT * FROM statements") == "invoice   | balance\ninvoice-1 | 3\n"


async def test_assert_idempotent_passes_a_guarded_read_model_and_shows_a_double_count(
    db: Database,
) -> None:
    history = [*FIRST, *THEN]
    assert await assert_idempotent(guarded(db.url), history, BALANCES, database=db) == EXPECTED
    await db.execute("TRUNCATE balances")
    await assert_idempotent(guarded_batch(db.url), [], BALANCES, database=db)

    await db.execute("TRUNCATE balances")
    with pytest.raises(AssertionError, match="'exact' is not idempotent") as failed:
        await assert_idempotent(exactly_once(db.url), [], BALANCES, database=db)
    assert "-account-1   | 13      | 3" in str(failed.value)
    assert "+account-1   | 26      | 6" in str(failed.value)


async def test_a_read_model_outside_the_database_is_compared_as_a_value(db: Database) -> None:
    sent: list[str] = []
    mailer = Projection("mailer", categories=["account"])

    @mailer.on("Withdrawn")
    async def mail(e: Event) -> None:
        sent.append(f"{e.stream_name} withdrew {e.data['amount']}")

    with pytest.raises(AssertionError, match="'mailer' is not idempotent") as failed:
        await assert_idempotent(mailer, FIRST, lambda: list(sent), database=db)
    assert "+['account-1 withdrew 2', 'account-1 withdrew 2']" in str(failed.value)


async def test_assert_deterministic_passes_a_fold_and_fails_what_counts_calls(
    db: Database,
) -> None:
    history = [*FIRST, *THEN]
    live = await assert_deterministic(
        exactly_once(db.url), history, BALANCES, database=db, clear="TRUNCATE balances"
    )
    assert live == EXPECTED

    await db.execute("TRUNCATE balances")
    with pytest.raises(AssertionError, match="'calls' is not deterministic"):
        await assert_deterministic(
            counting_calls(db.url),
            [event("Deposited", stream="account-3", amount=1) for _ in range(4)],
            BALANCES,
            database=db,
            clear="TRUNCATE balances",
        )


async def test_a_crash_before_the_checkpoint_redelivers_only_what_it_had_not_passed(
    db: Database,
) -> None:
    adding = at_least_once(db.url)
    await db.write(*FIRST)
    await run_until_caught_up(adding, db)
    await db.write(*THEN)

    await run_with_crash(adding, db)
    assert await db.snapshot(BALANCES) == (
        "stream_name | balance | events\naccount-1   | 23      | 4\naccount-2   | 7       | 1\n"
    )
    await db.execute("TRUNCATE balances")
    await run_with_crash(exactly_once(db.url), db)
    assert await db.snapshot(BALANCES) == EXPECTED


async def test_failing_streams_are_retried_and_parked_with_their_errors(db: Database) -> None:
    failed_once: set[str] = set()
    projection = Projection("fragile", categories=["account"])

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> None:
        if stream_name == "account-13":
            raise ValueError("account-13 cannot be counted")
        if stream_name == "account-7" and stream_name not in failed_once:
            failed_once.add(stream_name)
            raise RuntimeError("flaky")

    await db.write(*(event("Deposited", stream=f"account-{i}", amount=i) for i in (1, 7, 13)))
    run = await run_until_caught_up(projection, db, retry_max_attempts=3)

    parked = await assert_parked(db, projection, "account-13", error="cannot be counted")
    assert (parked.position, parked.attempts) == (0, 3)
    assert_retried(run, "account-7", error="RuntimeError: flaky")
    assert run.parked == {"account-13"}
    with pytest.raises(AssertionError, match="has not parked account-7"):
        await assert_parked(db, projection, "account-7")
    with pytest.raises(AssertionError, match="account-1 was not retried"):
        assert_retried(run, "account-1")


async def test_a_consumer_groups_members_record_their_own_streams_failures(db: Database) -> None:
    projection = Projection("members", categories=["account"])

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> None:
        raise ValueError(f"{stream_name} cannot be counted")

    await db.write(*(event("Deposited", stream=f"account-{i}", amount=i) for i in range(4)))
    runs = [
        await run_until_caught_up(projection, db, member=m, group_size=2, retry_max_attempts=1)
        for m in (0, 1)
    ]

    parked = runs[0].parked | runs[1].parked
    assert parked == {f"account-{i}" for i in range(4)}
    assert {f.group for run in runs for f in run.failures} == {"members-0", "members-1"}
    assert {f.stream for run in runs for f in run.failures if f.parked} == parked


async def test_a_transactional_handler_is_called_alone_in_a_transaction_of_the_connection(
    db: Database,
) -> None:
    async with db.connect() as conn:
        positions = await call_handler(exactly_once(db.url), [*FIRST, *THEN], conn=conn)

    assert positions == {"account-1": 3, "account-2": 1}
    assert await db.snapshot(BALANCES) == EXPECTED


async def test_an_event_given_a_position_is_written_only_there(db: Database) -> None:
    await db.execute("CREATE TABLE one (n int); CREATE TABLE two (n int)")  # several at once
    written = await db.write(event("Opened", stream="account-1", position=0, owner="ann"))
    assert [(e.position, e.global_position, e.data) for e in written] == [(0, 1, {"owner": "ann"})]

    with pytest.raises(WrongExpectedVersionError):
        await db.write(event("Opened", stream="account-1", position=0))
    with pytest.raises(MessageStoreError, match=f"id {written[0].id} is in the store already"):
        await db.write(event("Opened", stream="account-2", id=written[0].id))
    assert await db.rows("SELECT count(*) AS n FROM message_store.messages") == [{"n": 1}]

