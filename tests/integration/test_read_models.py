"""Read models that hold their streams' positions (`GuardedUpsert`, and transactional batch
projections with ``positions="read_model"``), on real Postgres: a redelivered span changes
nothing, an overlapping one applies only its new events, and a projection run again after its
checkpoints are reset leaves its read model equal to the fold. Written with the testing kit
(`projector.testing`)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import psycopg
import pytest

from projector import Column, ConfigurationError, Event, GuardedUpsert, Projection
from projector.storage import read_models
from projector.storage.database import Connection
from projector.testing import Database, assert_idempotent, call_handler, event, snapshot

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["merge", "upsert"])
def statement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A test with both forms of the statement, on the same server: the MERGE of PostgreSQL
    15 and later, and the locking upsert older servers get."""
    if request.param == "upsert":
        monkeypatch.setattr(read_models, "MERGE_SINCE", 10**9)
    return str(request.param)

TABLE = """
CREATE TABLE totals (stream text PRIMARY KEY, position bigint NOT NULL, total bigint NOT NULL,
                     events bigint NOT NULL, last_n bigint NOT NULL)
"""
UPSERT = GuardedUpsert(
    "totals",
    stream_column="stream",
    add={
        "total": Column("bigint", lambda e: e.position * 10),
        "events": Column("bigint", lambda e: 1),
    },
    latest={"last_n": Column("bigint", lambda e: e.position)},
)
COLUMNS = ["stream", "position", "total", "events", "last_n"]
TOTALS = "SELECT stream, position, total, events, last_n FROM totals"


def guarded(calls: list[int] | None = None) -> Projection:
    """A transactional batch projection whose rows hold their positions; records each call's
    number of streams in ``calls``."""
    projection = Projection("guarded", categories=["account"])

    @projection.transactional_batch(positions="read_model")
    async def apply(spans: dict[str, list[Event]], conn: Connection) -> None:
        if calls is not None:
            calls.append(len(spans))
        await UPSERT.execute(conn, spans)

    return projection


def at(stream: str, positions: range) -> list[Event]:
    return [event("Happened", stream=stream, position=p) for p in positions]


@pytest.mark.usefixtures("statement")
async def test_a_redelivered_span_changes_nothing_and_an_overlapping_one_adds_its_new_events(
    own_store_url: str,
) -> None:
    db = Database(own_store_url)
    await db.execute(TABLE)
    projection = guarded()

    async with db.connect() as conn:
        for events in (
            [*at("s-1", range(5)), *at("s-2", range(1))],
            [*at("s-1", range(5)), *at("s-2", range(1))],  # delivered again
            at("s-1", range(3, 8)),  # 3 and 4 again, then 5, 6 and 7
        ):
            await call_handler(projection, events, conn=conn)

    assert await db.snapshot(TOTALS) == (
        "stream | position | total | events | last_n\n"
        "s-1    | 7        | 280   | 8      | 7\n"  # total: 10 * (0 + 1 + ... + 7)
        "s-2    | 0        | 0     | 1      | 0\n"
    )


def test_a_guarded_upsert_refuses_a_type_it_does_not_bind_and_writing_no_column() -> None:
    with pytest.raises(ConfigurationError, match="column type 'bigint; drop table x'"):
        Column("bigint; drop table x", lambda e: 1)
    with pytest.raises(ConfigurationError, match="writes no column"):
        GuardedUpsert("totals")


def test_positions_must_be_projector_or_read_model() -> None:
    projection = Projection("p")
    with pytest.raises(ConfigurationError, match="positions='rows'"):
        projection.transactional_batch(positions="rows")  # type: ignore[call-overload]


@pytest.mark.usefixtures("statement")
async def test_a_projection_whose_rows_hold_positions_applies_each_event_once_after_a_reset(
    database_url: str,
) -> None:
    db = Database(database_url)
    await db.execute(TABLE)
    calls: list[int] = []
    events = [event("Counted", stream=f"account-{i}", n=n) for n in range(7) for i in range(40)]

    read_model = await assert_idempotent(
        guarded(calls), events, TOTALS, database=db, batch_size=50
    )

    assert read_model == snapshot(COLUMNS, [(f"account-{i}", 6, 210, 7, 6) for i in range(40)])
    assert await db.rows("SELECT count(*) AS n FROM projector.stream_positions") == [{"n": 0}]
    assert max(calls) > 1


@pytest.mark.usefixtures("statement")
async def test_a_write_waiting_on_another_applies_only_what_the_other_did_not(
    own_store_url: str,
) -> None:
    db = Database(own_store_url)
    await db.execute(TABLE)
    async with db.connect() as setup:
        await UPSERT.execute(setup, {"s-1": at("s-1", range(2))})

    async with db.connect() as first, db.connect() as second:
        await _second_waits_for_first(
            first,
            second,
            {"s-1": at("s-1", range(2, 5))},
            lambda conn: UPSERT.execute(conn, {"s-1": at("s-1", range(3, 8))}),
        )
        await second.execute("COMMIT")

    assert await db.snapshot(TOTALS) == (
        "stream | position | total | events | last_n\n"
        "s-1    | 7        | 280   | 8      | 7\n"  # each of 0..7 once
    )


async def test_two_first_writes_of_a_stream_at_once_never_apply_an_event_twice(
    own_store_url: str,
) -> None:
    # The MERGE's promise: before PostgreSQL 15 the member's lock keeps first writes apart.
    db = Database(own_store_url)
    await db.execute(TABLE)
    second_failed: list[BaseException] = []

    async def second_write(conn: Connection) -> None:
        try:
            await UPSERT.execute(conn, {"s-1": at("s-1", range(5))})
        except psycopg.errors.UniqueViolation as exc:
            second_failed.append(exc)

    async with db.connect() as first, db.connect() as second:
        await _second_waits_for_first(first, second, {"s-1": at("s-1", range(3))}, second_write)
        await second.execute("ROLLBACK")
        # The second fails on the key; tried again, it sees the first's row.
        assert len(second_failed) == 1
        await UPSERT.execute(second, {"s-1": at("s-1", range(5))})

    assert await db.snapshot(TOTALS) == (
        "stream | position | total | events | last_n\n"
        "s-1    | 4        | 100   | 5      | 4\n"  # each of 0..4 once
    )


async def _second_waits_for_first(
    first: Connection,
    second: Connection,
    first_spans: dict[str, list[Event]],
    second_write: Callable[[Connection], Coroutine[Any, Any, None]],
) -> None:
    """``first`` writes ``first_spans`` in a transaction; ``second`` starts one and runs
    ``second_write``, which waits on the first's rows until the first commits. Returns with
    the second's transaction still open."""
    await first.execute("BEGIN")
    await UPSERT.execute(first, first_spans)
    async with anyio.create_task_group() as tasks:
        await second.execute("BEGIN")
        tasks.start_soon(second_write, second)
        await anyio.sleep(0.2)  # the second is waiting for the first's row (or key) by then
        await first.execute("COMMIT")
