"""Seeding: Message DB-compatible rows by bulk ``INSERT ... SELECT generate_series``.

This is a fast bulk load for benchmarks, not how events are written in production: rows go into
``message_store.messages`` directly, not through ``write_message``, with the secondary indexes
dropped for the load and rebuilt from their own definitions afterwards (building an index once
is several times faster than growing it row by row). Each dataset is one category whose event
``i`` (from 0) goes to stream ``i % streams`` at stream position ``i // streams``, so stream
positions are gapless from 0 and global positions follow ``i``. Then ``VACUUM ANALYZE``: reads
right after a bulk load are several times slower without it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

SEED_VERSION = 1
CHUNK = 250_000

INSERT_CHUNK = """
INSERT INTO message_store.messages (position, stream_name, type, data, metadata)
SELECT i / %(streams)s::bigint,
       %(category)s || '-' || (i %% %(streams)s::bigint),
       CASE WHEN i %% 5 = 4 THEN 'Withdrawn' ELSE 'Deposited' END,
       jsonb_build_object('amount', i %% 1000),
       jsonb_build_object('schemaVersion', '1', 'traceId', %(category)s || ':' || i)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
ORDER BY i
"""

SECONDARY_INDEXES = """
SELECT i.indexname, i.indexdef
FROM pg_indexes AS i
WHERE i.schemaname = 'message_store' AND i.tablename = 'messages'
  AND NOT EXISTS (
      SELECT 1 FROM pg_constraint AS c
      WHERE c.conname = i.indexname AND c.connamespace = 'message_store'::regnamespace
  )
"""

MARKER = "CREATE TABLE public.bench_seed (spec jsonb NOT NULL)"


@dataclass(frozen=True)
class Dataset:
    """One category of ``events`` events spread round-robin over ``streams`` streams."""

    category: str
    events: int
    streams: int


def database_name(store: str, datasets: Sequence[Dataset]) -> str:
    """A name that changes with anything that changes the seeded data, so it can be reused."""
    spec = json.dumps([SEED_VERSION, store, *(asdict(d) for d in datasets)], sort_keys=True)
    return "projector_bench_" + hashlib.sha256(spec.encode()).hexdigest()[:12]


def is_seeded(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('public.bench_seed') IS NOT NULL").fetchone()
        return bool(row and row[0])


def seed(url: str, datasets: Sequence[Dataset]) -> float:
    """Load every dataset, rebuild the indexes, VACUUM ANALYZE; returns seconds taken."""
    started = time.perf_counter()
    total = sum(d.events for d in datasets)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        indexes = conn.execute(SECONDARY_INDEXES).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX message_store."{name}"')
        done = 0
        for dataset in datasets:
            for params in chunks(dataset):
                conn.execute(INSERT_CHUNK, params)
                done += params["last"] - params["first"] + 1
                _progress(f"seeded {done:,} of {total:,} events", started)
        for _, definition in indexes:
            conn.execute(definition)
        _progress("indexes rebuilt", started)
        conn.execute("VACUUM ANALYZE message_store.messages")
        conn.execute(MARKER)
        spec = json.dumps([asdict(d) for d in datasets])
        conn.execute("INSERT INTO public.bench_seed (spec) VALUES (%s)", (spec,))
    seconds = time.perf_counter() - started
    _progress(f"seeded {total:,} events ({total / seconds:,.0f} events/s with indexes)", started)
    return seconds


def chunks(dataset: Dataset) -> Iterator[dict[str, Any]]:
    """The parameters of the ``INSERT_CHUNK`` statements that write ``dataset``."""
    for first in range(0, dataset.events, CHUNK):
        last = min(first + CHUNK, dataset.events) - 1
        yield {**asdict(dataset), "first": first, "last": last}


def _progress(message: str, started: float) -> None:
    print(f"bench: {message} [{time.perf_counter() - started:.1f} s]", file=sys.stderr)
