"""Batch handlers, in-process on real Postgres: several streams' spans per call, exactly once
in one transaction (`transactional_batch`) or at least once (`batch`), and a failing stream
in a batch retried and parked alone while the batch's other streams go on. Written with the
testing kit (`projector.testing`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from projector import Event, Projection, StreamResult
from projector.storage.database import Connection
from projector.testing import (
    Database,
    assert_parked,
    event,
    run_until_caught_up,
    run_with_crash,
)

pytestmark = pytest.mark.anyio

POISON = "account-13"
STREAMS = 500
# Every stream of a read batch in one batch call; a failing stream parked soon.
BATCHING: dict[str, Any] = {
    "batch_size": STREAMS,
    "max_concurrent_streams": STREAMS,
    "batch_max_streams": STREAMS,
    "retry_max_attempts": 3,
    "on_failure": "park",
}

CREATE = """
CREATE TABLE counted (stream_name text PRIMARY KEY, total bigint NOT NULL, events bigint NOT NULL)
"""
# Adds to each stream's row (not idempotent on its own: a double application shows), one
# statement for the whole batch.
ADD_ALL = """
INSERT INTO counted AS c (stream_name, total, events)
SELECT * FROM unnest(%(streams)s::text[], %(totals)s::bigint[], %(counts)s::bigint[])
ON CONFLICT (stream_name) DO UPDATE SET total = c.total + EXCLUDED.total,
                                        events = c.events + EXCLUDED.events
"""
COUNTED = "SELECT stream_name, total, events FROM counted"
# The read model every event applied once would hold, folded from the store (but for the
# streams %(left_out)s).
FOLD = """
SELECT stream_name, sum((data->>'n')::bigint + 1) AS total, count(*) AS events
FROM message_store.messages
WHERE message_store.category(stream_name) = 'account' AND stream_name <> ALL(%(left_out)s)
GROUP BY stream_name
"""
NONE_LEFT_OUT: dict[str, list[str]] = {"left_out": []}
CHECKPOINT_AT_THE_HEAD = """
SELECT c.position = (SELECT max(global_position) + 1 FROM message_store.messages) AS at_head
FROM projector.checkpoints AS c WHERE c.group_name = %(group)s AND c.category = 'account'
"""


async def write_streams(db: Database, *, streams: int = STREAMS, events: int = 2) -> None:
    """``events`` events in each of ``streams`` streams, interleaved: a read batch holds many."""
    await db.write(
        *(
            event("Counted", stream=f"account-{i}", n=n)
            for n in range(events)
            for i in range(streams)
        )
    )
    await db.execute(CREATE)


Calls = list[dict[str, list[int]]]  # each call's streams and the positions it was given


def counting(name: str, *, poison: str | None = None) -> tuple[Projection, Calls]:
    """A transactional batch projection adding each event's ``n + 1`` to its stream's row in
    one statement per call, then raising if ``poison`` is among the streams; and its calls."""
    projection, calls = Projection(name, categories=["account"]), []

    @projection.transactional_batch
    async def add(spans: dict[str, list[Event]], conn: Connection) -> None:
        calls.append({name: [e.position for e in events] for name, events in spans.items()})
        names = list(spans)
        totals = [sum(int(e.data["n"]) + 1 for e in spans[name]) for name in names]
        counts = [len(spans[name]) for name in names]
        await conn.execute(ADD_ALL, {"streams": names, "totals": totals, "counts": counts})
        if poison in spans:
            raise ValueError(f"{poison} cannot be counted")

    return projection, calls


async def test_a_transactional_batch_applies_every_event_once_in_calls_of_many_streams(
    database_url: str,
) -> None:
    db = Database(database_url)
    await write_streams(db)
    projection, calls = counting("counting")

    # Handled, then (the checkpoint never committed) every event delivered again.
    await run_with_crash(projection, db, **BATCHING)

    assert await db.snapshot(COUNTED) == await db.snapshot(FOLD, NONE_LEFT_OUT)
    assert len(await db.rows(FOLD, NONE_LEFT_OUT)) == STREAMS
    assert max(len(call) for call in calls) > 1
    given = [(name, p) for call in calls for name, positions in call.items() for p in positions]
    assert len(given) == len(set(given)) == 2 * STREAMS, "a replay called the handler again"


async def test_a_poison_stream_in_a_transactional_batch_is_parked_alone_with_none_of_its_writes(
    database_url: str,
) -> None:
    db = Database(database_url)
    await write_streams(db)
    projection, calls = counting("counting", poison=POISON)

    run = await run_until_caught_up(projection, db, **BATCHING)

    assert await db.snapshot(COUNTED) == await db.snapshot(FOLD, {"left_out": [POISON]})
    assert run.parked == {POISON}
    await assert_parked(db, projection, POISON, error=f"ValueError: {POISON} cannot be counted")
    assert [POISON] in [list(call) for call in calls]
    assert await db.rows(CHECKPOINT_AT_THE_HEAD, {"group": "counting"}) == [{"at_head": True}]


async def test_a_transactional_batch_records_only_what_each_stream_says_it_handled(
    own_store_url: str,
) -> None:
    db = Database(own_store_url)
    await write_streams(db, streams=20, events=3)
    projection = Projection("one_at_a_time", categories=["account"])

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

    await run_until_caught_up(projection, db, **{**BATCHING, "batch_size": 50})

    assert await db.snapshot(COUNTED) == await db.snapshot(FOLD, NONE_LEFT_OUT)


async def test_a_poison_stream_in_an_at_least_once_batch_is_parked_alone(
    database_url: str,
) -> None:
    db = Database(database_url)
    await write_streams(db)
    handled: dict[str, list[int]] = defaultdict(list)
    projection = Projection("bulk", categories=["account"])

    @projection.batch
    async def bulk(spans: dict[str, list[Event]]) -> None:
        if POISON in spans:
            raise ValueError(f"{POISON} cannot be sent")
        for name, events in spans.items():
            handled[name].extend(event.position for event in events)

    run = await run_until_caught_up(projection, db, **BATCHING)

    others = {f"account-{i}" for i in range(STREAMS)} - {POISON}
    assert set(handled) == others
    assert all(handled[name] == [0, 1] for name in others)
    assert run.parked == {POISON}
    await assert_parked(db, projection, POISON, error="cannot be sent")
