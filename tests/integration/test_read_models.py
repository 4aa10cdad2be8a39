"""Read models that hold their streams' positions (`GuardedUpsert`, and transactional batch
projections with ``positions="read_model"``), on real Postgres: a redelivered span changes
nothing, an overlapping one applies only its new events, and a projection run again after its
checkpoints are reset leaves its read model equal to the fold."""

from __future__ import annotations

import psycopg
import pytest

from projector import Column, ConfigurationError, Event, GuardedUpsert, Projection
from projector.ops.groups import reset_group
from projector.storage.database import Connection, connect
from tests.support.projecting import run_projection, settings_for, write_events
from tests.support.sink import evs

pytestmark = pytest.mark.anyio

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


async def rows(conn: Connection) -> dict[str, tuple[int, int, int, int]]:
    cursor = await conn.execute("SELECT stream, position, total, events, last_n FROM totals")
    return {
        str(s): (int(p), int(t), int(n), int(last)) for s, p, t, n, last in await cursor.fetchall()
    }


async def test_a_redelivered_span_changes_nothing_and_an_overlapping_one_adds_its_new_events(
    own_store_url: str,
) -> None:
    conn = await connect(own_store_url)
    async with conn:
        await conn.execute(TABLE)
        await UPSERT.execute(conn, {"s-1": evs("s-1", [0, 1, 2, 3, 4]), "s-2": evs("s-2", [0])})
        await UPSERT.execute(conn, {"s-1": evs("s-1", [0, 1, 2, 3, 4]), "s-2": evs("s-2", [0])})
        await UPSERT.execute(conn, {"s-1": evs("s-1", [3, 4, 5, 6, 7])})

        assert await rows(conn) == {
            "s-1": (7, 10 * sum(range(8)), 8, 7),
            "s-2": (0, 0, 1, 0),
        }


def test_a_guarded_upsert_refuses_a_type_it_does_not_bind_and_writing_no_column() -> None:
    with pytest.raises(ConfigurationError, match="column type 'bigint; drop table x'"):
        Column("bigint; drop table x", lambda e: 1)
    with pytest.raises(ConfigurationError, match="writes no column"):
        GuardedUpsert("totals")


def test_positions_must_be_projector_or_read_model() -> None:
    projection = Projection("p")
    with pytest.raises(ConfigurationError, match="positions='rows'"):
        projection.transactional_batch(positions="rows")  # type: ignore[call-overload]


async def test_a_projection_whose_rows_hold_positions_applies_each_event_once_after_a_reset(
    database_url: str,
) -> None:
    await write_events(database_url, {f"account-{i}": 7 for i in range(40)})
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute(TABLE)
    projection = Projection("guarded")
    calls: list[int] = []

    @projection.transactional_batch(positions="read_model")
    async def apply(spans: dict[str, list[Event]], conn: Connection) -> None:
        calls.append(len(spans))
        await UPSERT.execute(conn, spans)

    settings = settings_for(database_url, categories=("account",), batch_size=50)
    await run_projection(projection, settings)
    async with await psycopg.AsyncConnection.connect(database_url) as admin:
        await reset_group(admin, "guarded")
    await run_projection(projection, settings)

    conn = await connect(database_url)
    async with conn:
        found = await rows(conn)
        positions = await (
            await conn.execute("SELECT count(*) FROM projector.stream_positions")
        ).fetchone()
    assert found == {f"account-{i}": (6, 10 * sum(range(7)), 7, 6) for i in range(40)}
    assert positions == (0,)
    assert max(calls) > 1
