"""``python -m bench elastic``: an elastic group's rebalances and its scaling, with real
`projector run --elastic` processes (see `bench.fleet`, and `bench.members` for what they run).

- **join**: one member runs, caught up, while a writer appends; a second member starts. The
  seconds from its process start, and from its first ``bucket_acquired`` record, until its first
  handler call. Reported as absolute seconds beside the heartbeat: the wait is a few heartbeats
  (the old owner sees the newcomer at its next beat, drains, releases; the newcomer takes the
  buckets at its own next beat) plus the interpreter's start, not CPU-bound work.
- **rebalance**: across those joins and a graceful leave (SIGTERM) of the older member after
  each, every handler call is recorded (stream, every position it was given) and compared with
  ``message_store.messages`` event by event: events delivered more than once (target 0), and
  events missed; beside the writer's own count of what it wrote.
- **catch-up**: 1, 2 and 4 members (``--elastic-members``) catching up the same backlog, as
  events/s and as a ratio to the 1-member figure of the same run. The members join an empty
  category and settle first, and the backlog appears in one transaction: the figure is the
  group's reading and handling, not its joins (the join scenario measures those).

Each figure comes from one run of this command: read them beside the heartbeat and the cores.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import seed
from bench.fleet import SETTLE, Elasticity, Fleet, Member
from bench.scenarios import ROOT, Sizes
from bench.seed import Dataset
from bench.tail import SteadyWriter
from projector.storage import member_index

WRITER_STREAMS = 100

CALLS_TABLE = """
CREATE TABLE {table} (
    stream text NOT NULL,
    positions bigint[] NOT NULL,
    pid int NOT NULL,
    at float8 NOT NULL
);
CREATE INDEX ON {table} (stream)
"""

# Per event of the category (up to ``head``), how many recorded calls were given it.
DELIVERIES = """
SELECT count(*) FILTER (WHERE n = 0), coalesce(sum(n - 1) FILTER (WHERE n > 1), 0), count(*)
FROM (
    SELECT count(c.stream) AS n
    FROM message_store.messages AS m
    LEFT JOIN (SELECT stream, unnest(positions) AS position FROM {table}) AS c
      ON c.stream = m.stream_name AND c.position = m.position
    WHERE message_store.category(m.stream_name) = %(category)s
      AND m.global_position <= %(head)s
    GROUP BY m.global_position
) AS per_event
"""

HEAD = """
SELECT coalesce(max(global_position), 0) FROM message_store.messages
WHERE message_store.category(stream_name) = %s
"""

CHECKPOINTED = """
SELECT count(*), min(position) FROM projector.checkpoints WHERE group_name = %s AND category = %s
"""


@dataclass(frozen=True)
class Join:
    """One member's join, in seconds from its process start."""

    to_first_event: float
    to_acquired: float

    @property
    def acquired_to_first_event(self) -> float:
        return self.to_first_event - self.to_acquired


@dataclass
class Rebalances:
    """What the join-and-leave run delivered, against what was written."""

    joins: list[Join] = field(default_factory=list)
    leave_settled_s: list[float] = field(default_factory=list)
    written: int = 0  # the writer's count
    stored: int = 0  # the category's events in message_store.messages
    redelivered: int = 0
    missed: int = 0


@dataclass(frozen=True)
class Catchup:
    members: int
    events: int
    seconds: float

    @property
    def events_per_s(self) -> int:
        return round(self.events / self.seconds) if self.seconds else 0


@dataclass
class Outcome:
    """The elastic command's figures, with the settings they were measured at."""

    elasticity: Elasticity
    sizes: Sizes
    rebalances: Rebalances
    catchups: list[Catchup]
    notes: list[str] = field(default_factory=list)


def run(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> Outcome:
    """Every elastic measurement, on a bucket index built for the run and dropped after it."""
    elasticity = Elasticity(sizes.elastic_buckets, sizes.elastic_heartbeat, sizes.elastic_lease)
    env = member_env(url, settings)
    # The read README recommends for elastic groups; without it every member reads and hashes
    # every row of the category, and more members would only mean more reading.
    _say(f"elastic: building the bucket index for {elasticity.buckets} buckets (untimed)")
    member_index.install_bucket_index(url, elasticity.buckets)
    with tempfile.TemporaryDirectory(prefix="bench-elastic-") as folder:
        logs = Path(folder)
        try:
            rebalances = _rebalances(url, run_id, sizes, elasticity, env, logs)
            catchups = [
                _catchup(url, run_id, sizes, elasticity, env, logs, members)
                for members in sizes.elastic_members
            ]
        finally:
            _clean_up(url, run_id, elasticity)
    outcome = Outcome(elasticity, sizes, rebalances, catchups)
    _check(outcome)
    return outcome


def _rebalances(
    url: str,
    run_id: str,
    sizes: Sizes,
    elasticity: Elasticity,
    env: dict[str, str],
    logs: Path,
) -> Rebalances:
    """A member joins one that is caught up, then the older one leaves (SIGTERM), ``joins``
    times, while a writer appends; then the calls are compared with the store."""
    category, table = f"bench_elastic_{run_id}_rebalance", f"bench_{run_id}_elastic_calls"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(CALLS_TABLE).format(table=sql.Identifier(table)))
    fleet = Fleet(
        url,
        f"bench_{run_id}_elastic_rebalance",
        category,
        "bench.members:calls",
        elasticity,
        logs,
        {**env, "BENCH_CALLS_TABLE": table},
        batch_size=sizes.batch_size,
    )
    _say(
        f"elastic-join: {sizes.elastic_joins} join(s) and graceful leave(s), a writer at "
        f"{sizes.elastic_rate:g} events/s"
    )
    found = Rebalances()
    writer = SteadyWriter(url, category, sizes.elastic_rate, streams=WRITER_STREAMS)
    try:
        writer.start()
        current = fleet.spawn()
        fleet.wait_settled([current])
        for _ in range(sizes.elastic_joins):
            current = _join_then_leave(fleet, table, current, found)
        writer.stop()
        found.written = writer.written
        _wait_handled(fleet, table, category_head(url, category))
    finally:
        writer.stop()
        fleet.stop()
    head = category_head(url, category)
    found.missed, found.redelivered, found.stored = deliveries(url, table, category, head)
    return found


def _join_then_leave(fleet: Fleet, table: str, current: Member, found: Rebalances) -> Member:
    """Once ``current`` is caught up, a member joins it, then ``current`` leaves; the joiner."""
    _wait_handled(fleet, table, category_head(fleet.url, fleet.category))
    joiner = fleet.spawn()
    fleet.wait_settled([current, joiner])
    found.joins.append(_join(fleet, table, joiner))
    left = time.monotonic()
    current.stop()
    fleet.wait_settled([joiner])
    found.leave_settled_s.append(time.monotonic() - left)
    return joiner


def _join(fleet: Fleet, table: str, joiner: Member) -> Join:
    """The joiner's figures, once it has handled an event."""
    fleet.wait(lambda: first_call(fleet.url, table, joiner.pid) is not None, "first event")
    first, acquired = first_call(fleet.url, table, joiner.pid), joiner.first_acquired()
    assert first is not None
    if acquired is None:
        raise SystemExit(
            f"bench: member {joiner.pid} logged no bucket_acquired:\n{joiner.log_tail()}"
        )
    join = Join(first - joiner.started, acquired - joiner.started)
    _say(
        f"  joined: first event {join.to_first_event:.2f} s after its start, "
        f"{join.acquired_to_first_event:.2f} s after its first bucket"
    )
    return join


def _catchup(
    url: str,
    run_id: str,
    sizes: Sizes,
    elasticity: Elasticity,
    env: dict[str, str],
    logs: Path,
    members: int,
) -> Catchup:
    """``members`` settled members, then the backlog; seconds from the first handler call to
    the last, across the members (each counts its own in `bench.members.tally`)."""
    category = f"bench_elastic_{run_id}_catchup{members}"
    dataset = Dataset(category, sizes.elastic_events, sizes.streams)
    group = f"bench_{run_id}_elastic_catchup{members}"
    tallies = logs / group
    tallies.mkdir()
    fleet = Fleet(
        url,
        group,
        dataset.category,
        "bench.members:tally",
        elasticity,
        logs,
        {**env, "BENCH_TALLY_DIR": str(tallies)},
        batch_size=sizes.batch_size,
    )
    _say(f"elastic-catchup: {members} member(s), {dataset.events:,} events")
    try:
        fleet.wait_settled([fleet.spawn() for _ in range(members)])
        head = _append(url, dataset)
        fleet.wait(
            lambda: _checkpointed(url, group, dataset.category, head, elasticity.buckets),
            f"catch-up of {dataset.events:,} events",
            within=SETTLE + dataset.events / 5_000,
        )
    finally:
        fleet.stop()  # each member writes its tally as it exits
    counted = [json.loads(path.read_text()) for path in tallies.glob("*.json")]
    seconds = max(t["last"] for t in counted) - min(t["first"] for t in counted)
    catchup = Catchup(members, sum(t["events"] for t in counted), seconds)
    _say(f"  {catchup.events:,} events in {seconds:.2f} s ({catchup.events_per_s:,}/s)")
    return catchup


def _append(url: str, dataset: Dataset) -> int:
    """Write ``dataset`` in one transaction, so that the backlog appears at once; the head."""
    with psycopg.connect(url) as conn:
        for params in seed.chunks(dataset):
            conn.execute(seed.INSERT_CHUNK, params)
        # In the same transaction: ANALYZE counts its own uncommitted rows, so the members'
        # first reads are planned with the backlog in the statistics.
        conn.execute("ANALYZE message_store.messages")
        row = conn.execute(HEAD, (dataset.category,)).fetchone()
    assert row is not None
    return int(row[0])


def _checkpointed(url: str, group: str, category: str, head: int, buckets: int) -> bool:
    """Every bucket's checkpoint (the next position to read) past ``head``."""
    with psycopg.connect(url) as conn:
        row = conn.execute(CHECKPOINTED, (group, category)).fetchone()
    return row is not None and row[0] == buckets and row[1] > head


def _wait_handled(fleet: Fleet, table: str, head: int) -> None:
    """Until every event of the fleet's category up to ``head`` was handled."""
    fleet.wait(
        lambda: deliveries(fleet.url, table, fleet.category, head)[0] == 0,
        f"handling of the events up to {head}",
    )


def deliveries(url: str, table: str, category: str, head: int) -> tuple[int, int, int]:
    """(missed, delivered again, events) of ``category`` up to ``head``."""
    statement = sql.SQL(DELIVERIES).format(table=sql.Identifier(table))
    with psycopg.connect(url) as conn:
        row = conn.execute(statement, {"category": category, "head": head}).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def first_call(url: str, table: str, pid: int) -> float | None:
    statement = sql.SQL("SELECT min(at) FROM {} WHERE pid = %s").format(sql.Identifier(table))
    with psycopg.connect(url) as conn:
        row = conn.execute(statement, (pid,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def category_head(url: str, category: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(HEAD, (category,)).fetchone()
    assert row is not None
    return int(row[0])


def _clean_up(url: str, run_id: str, elasticity: Elasticity) -> None:
    """Drop what would change later runs on a kept or reused database: the bucket index (which
    catch-up reads of a category could be planned through) and this run's events."""
    index = sql.Identifier(member_index.bucket_index_name(elasticity.buckets))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS message_store.{}").format(index))
        conn.execute(
            "DELETE FROM message_store.messages WHERE stream_name LIKE %s",
            (f"bench\\_elastic\\_{run_id}\\_%",),
        )
        conn.execute(
            sql.SQL("DROP TABLE IF EXISTS {}").format(
                sql.Identifier(f"bench_{run_id}_elastic_calls")
            )
        )


def member_env(url: str, settings: dict[str, Any]) -> dict[str, str]:
    """The members' environment: the database, the bench importable, and ``--setting``s as
    the ``PROJECTOR_...`` variables `projector run` reads them from."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PROJECTOR_DATABASE_URL": url, "PYTHONPATH": path}
    for name, value in settings.items():
        env[f"PROJECTOR_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def _check(outcome: Outcome) -> None:
    found, catchups = outcome.rebalances, outcome.catchups
    if found.missed:
        outcome.notes.append(f"{found.missed} event(s) written were never handled")
    if found.stored != found.written:
        outcome.notes.append(f"the writer wrote {found.written:,} events, the store holds "
                             f"{found.stored:,}")
    expected = outcome.sizes.elastic_events
    for catchup in catchups:
        if catchup.events != expected:
            outcome.notes.append(
                f"{catchup.members} member(s) handled {catchup.events:,} events of {expected:,}"
            )


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
