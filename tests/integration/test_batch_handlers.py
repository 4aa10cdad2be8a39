"""Batch handlers, in-process on real Postgres: several streams' spans per call, exactly once
in one transaction (`transactional_batch`) or at least once (`batch`), and a failing stream
in a batch retried and parked alone while the batch's other streams go on."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import psycopg
import pytest

from projector import Event, Projection, StreamResult
from projector.ops.groups import reset_group
from projector.settings import Settings
from projector.storage.database import Connection
from tests.support.failures import parked_streams
from tests.support.projecting import checkpoint, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio

POISON = "account-13"
STREAMS = 500

CREATE = """
CREATE TABLE IF NOT EXISTS counted (stream_name text PRIMARY KEY, total bigint NOT NULL,
                                    events bigint NOT NULL)
"""
# Adds to each stream's row (not idempotent on its own: a double application shows), one
# statement for the whole batch.
ADD_ALL = """
INSERT INTO counted AS c (stream_name, total, events)
SELECT * FROM unnest(%(streams)s::text[], %(totals)s::bigint[], %(counts)s::bigint[])
ON CONFLICT (stream_name) DO UPDATE SET total = c.total + EXCLUDED.total,
                                        events = c.events + EXCLUDED.events
"""
FOLD = """
SELECT stream_name, sum((data->>'n')::bigint + 1), count(*) FROM message_store.messages
WHERE message_store.category(stream_name) = 'account'
GROUP BY stream_name
"""


def batching(url: str, **overrides: Any) -> Settings:
    """Every stream of a read batch in one batch call; a failing stream parked soon."""
    values: dict[str, Any] = {
        "categories": ("account",),
        "batch_size": STREAMS,
        "max_concurrent_streams": STREAMS,
        "batch_max_streams": STREAMS,
        "retry_base": 0.01,
        "retry_max_attempts": 3,
        "on_failure": "park",
    }
    return settings_for(url, **{**values, **overrides})


async def write_streams(url: str, *, streams: int = STREAMS, events: int = 2) -> None:
    """``events`` events in each of ``streams`` streams, interleaved: a read batch holds many."""
    await write_events(url, {f"account-{i}": events for i in range(streams)})
    with psycopg.connect(url) as conn:
        conn.execute(CREATE)


def counting(name: str, *, poison: str | None = None) -> tuple[Projection, list[list[str]]]:
    """A transactional batch projection adding each event's ``n + 1`` to its stream's row in
    one statement per call, then raising if ``poison`` is among the streams; and its calls."""
    projection, calls = Projection(name), []

    @projection.transactional_batch
    async def add(spans: dict[str, list[Event]], conn: Connection) -> None:
        calls.append(sorted(spans))
        names = list(spans)
        totals = [sum(int(e.data["n"]) + 1 for e in spans[name]) for name in names]
        counts = [len(spans[name]) for name in names]
        await conn.execute(ADD_ALL, {"streams": names, "totals": totals, "counts": counts})
        if poison in spans:
            raise ValueError(f"{poison} cannot be counted")

    return projection, calls


def projected_and_folded(url: str) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]:
    with psycopg.connect(url) as conn:
        projected = {
            name: (int(total), int(events))
            for name, total, events in conn.execute("SELECT * FROM counted").fetchall()
        }
        folded = {
            name: (int(total), int(events)) for name, total, events in conn.execute(FOLD).fetchall()
        }
    return projected, folded


async def test_a_transactional_batch_applies_every_event_once_in_calls_of_many_streams(
    database_url: str,
) -> None:
    await write_streams(database_url)
    projection, calls = counting("counting")

    await run_projection(projection, batching(database_url))
    first = len(calls)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await reset_group(conn, "counting")
    await run_projection(projection, batching(database_url))

    projected, folded = projected_and_folded(database_url)
    assert projected == folded
    assert len(folded) == STREAMS
    assert max(len(call) for call in calls) > 1
    assert len(calls) == first, "a replay after a reset called the handler again"


async def test_a_poison_stream_in_a_transactional_batch_is_parked_alone_with_none_of_its_writes(
    database_url: str,
) -> None:
    await write_streams(database_url)
    projection, calls = counting("counting", poison=POISON)

    await run_projection(projection, batching(database_url))

    projected, folded = projected_and_folded(database_url)
    assert POISON not in projected
    assert projected == {name: totals for name, totals in folded.items() if name != POISON}
    assert [row.stream_name for row in await parked_streams(database_url, "counting")] == [POISON]
    assert [POISON] in calls
    head = await _head(database_url)
    assert await checkpoint(database_url, "counting", "account") == head + 1


async def test_a_transactional_batch_records_only_what_each_stream_says_it_handled(
    own_store_url: str,
) -> None:
    await write_streams(own_store_url, streams=20, events=3)
    projection = Projection("one_at_a_time")

    @projection.transactional_batch
    async def first_only(
        spans: dict[str, list[Event]], conn: Connection
    ) -> dict[str, StreamResult]:
        names = list(spans)
        totals = [int(spans[name][0].data["n"]) + 1 for name in names]
        await conn.execute(
            ADD_ALL, {"streams": names, "totals": totals, "counts": [1] * len(names)}
        )
        return {name: StreamResult.partially_processed(1) for name in names}

    await run_projection(projection, batching(own_store_url, batch_size=50))

    projected, folded = projected_and_folded(own_store_url)
    assert projected == folded


async def test_a_poison_stream_in_an_at_least_once_batch_is_parked_alone(
    database_url: str,
) -> None:
    await write_streams(database_url)
    handled: dict[str, list[int]] = defaultdict(list)
    projection = Projection("bulk")

    @projection.batch
    async def bulk(spans: dict[str, list[Event]]) -> None:
        if POISON in spans:
            raise ValueError(f"{POISON} cannot be sent")
        for name, events in spans.items():
            handled[name].extend(event.position for event in events)

    await run_projection(projection, batching(database_url))

    others = {f"account-{i}" for i in range(STREAMS)} - {POISON}
    assert set(handled) == others
    assert all(handled[name] == [0, 1] for name in others)
    assert [row.stream_name for row in await parked_streams(database_url, "bulk")] == [POISON]


async def _head(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute("SELECT max(global_position) FROM message_store.messages")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
