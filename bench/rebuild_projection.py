"""The projection the rebuild benchmark's `projector run` processes run: per stream, its event
count and the sum of its amounts, in one table per version, written exactly once by a
transactional batch handler (the fastest exactly-once form with projector's positions).

Its name, category and version come from ``BENCH_REBUILD_NAME``, ``BENCH_REBUILD_CATEGORY`` and
``BENCH_REBUILD_VERSION``, so one module serves the plain catch-up and both versions of a
rebuild. Kept apart from `bench.rebuild` so that a runner imports nothing of the bench's own.
"""

from __future__ import annotations

import os

from psycopg import AsyncConnection

from projector import Event, Projection

CREATE = """
CREATE TABLE totals (stream_name text PRIMARY KEY, events integer NOT NULL, amount bigint NOT NULL)
"""
UPSERT = """
INSERT INTO totals AS t (stream_name, events, amount)
SELECT * FROM unnest(%(streams)b::text[], %(events)b::int[], %(amounts)b::bigint[])
ON CONFLICT (stream_name) DO UPDATE
SET events = t.events + EXCLUDED.events, amount = t.amount + EXCLUDED.amount
"""


async def setup(conn: AsyncConnection[tuple[object, ...]]) -> None:
    await conn.execute(CREATE)


projection = Projection(
    os.environ.get("BENCH_REBUILD_NAME", "bench_rebuild"),
    categories=[os.environ.get("BENCH_REBUILD_CATEGORY", "bench_upsert")],
    version=int(os.environ.get("BENCH_REBUILD_VERSION", "1")),
    setup=setup,
)


@projection.transactional_batch
async def apply(spans: dict[str, list[Event]], conn: AsyncConnection[tuple[object, ...]]) -> None:
    streams = list(spans)
    await conn.execute(
        UPSERT,
        {
            "streams": streams,
            "events": [len(spans[name]) for name in streams],
            "amounts": [sum(int(e.data["amount"]) for e in spans[name]) for name in streams],
        },
    )
