"""What one child process measures: a baseline loop, or projector's runner with a bench handler.

Every measurement runs in a fresh child process (`bench.child`), so that its peak RSS
(``VmHWM`` from /proc/self/status, read in the child at the end) is its own, and no run warms
another's caches. The clock starts after imports and after the bench's own connections are open; a
projector run's clock includes everything ``Runner.run`` does (its pool, schema checks, member
lock, checkpoint loads and the final commit).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import orjson
import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from projector import Column, Event, GuardedUpsert, Projection
from projector.process import backend_options, collect_garbage_less_often
from projector.runner import Runner
from projector.settings import Settings
from projector.storage import member_index, notify, read_models
from projector.storage.database import SESSION_SETTINGS
from projector.storage.message_store import READ_CATEGORY, read_member
from projector.storage.stream_positions import BEGIN, ROLL_BACK, Session

GROUP_READ = """
SELECT * FROM message_store.get_category_messages(%s, %s, %s, NULL, %s, %s, NULL)
"""

READ_MODEL = """
CREATE TABLE IF NOT EXISTS {table} (
    stream_name text PRIMARY KEY,
    position bigint NOT NULL,
    balance bigint NOT NULL,
    events bigint NOT NULL
)
"""

# One row per stream span; a replayed span (at or below the stored position) changes nothing.
UPSERT = """
INSERT INTO {table} AS m (stream_name, position, balance, events) VALUES (%s, %s, %s, %s)
ON CONFLICT (stream_name) DO UPDATE
SET position = excluded.position, balance = m.balance + excluded.balance,
    events = m.events + excluded.events
WHERE m.position < excluded.position
"""


READ_MODEL_TOTALS = """
SELECT count(*), coalesce(sum(events), 0),
       md5(coalesce(string_agg(concat_ws(',', stream_name, position, balance, events), ';'
                               ORDER BY stream_name), ''))
FROM {table}
"""


# The same rows for a whole batch of spans in one statement (batch handlers); arrays bound in
# binary (%b), which psycopg dumps several times faster than as text.
UPSERT_ALL = """
INSERT INTO {table} AS m (stream_name, position, balance, events)
SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[])
ON CONFLICT (stream_name) DO UPDATE
SET position = excluded.position, balance = m.balance + excluded.balance,
    events = m.events + excluded.events
WHERE m.position < excluded.position
"""


@dataclass(frozen=True)
class Job:
    """One measurement; ``kind`` names the function below that runs it."""

    kind: str
    url: str
    category: str
    batch_size: int = 500
    decode: bool = False
    decoder: str = "json"  # read loops that decode: json, or orjson (what Event.data uses)
    # projector runs: noop, decode, upsert or tail (stream handlers); noop_batch or batch (batch
    # handlers); transactional, transactional_batch or read_model_batch (exactly once)
    handler: str = "noop"
    group: str = "bench"
    member: int | None = None
    size: int | None = None
    table: str = ""
    pool_size: int = 10
    tail_sleep: float = 0.1
    notify: bool = False  # tail runs: install the wake-up trigger for the run, drop it after
    member_index: bool = False  # member runs: with the member index for the size, or without
    warmup: float = 1.0
    seconds: float = 10.0
    settings: dict[str, Any] = field(default_factory=dict)
    # failing-stream runs (bench.failing_jobs): the stream counted apart from the healthy ones,
    # and whether every call of it raises
    failing_stream: str = ""
    fails: bool = False


@dataclass
class Clock:
    """Wall-clock and CPU seconds since it was made. The CPU time is this process's alone (not
    the server's): on a shared, busy machine it is shaken much less than the wall clock, so its
    figure per event compares runs that the wall clock cannot."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)

    def figures(self, events: int) -> dict[str, Any]:
        """``events``, the seconds taken, and the CPU time in all and per event."""
        cpu = time.process_time() - self.cpu
        return {
            "events": events,
            "seconds": time.perf_counter() - self.wall,
            "cpu_seconds": round(cpu, 3),
            "cpu_us_per_event": round(cpu / events * 1e6, 2) if events else None,
        }


# -- baselines: plain loops, one connection, no projector code --------------------------------


def read_loop(job: Job) -> dict[str, Any]:
    """projector's own read statement in a plain loop; rows fetched, JSON decoded only on
    request (``decode``: ``json.loads``, or ``orjson.loads``, of data and metadata for every
    row)."""
    loads = orjson.loads if job.decoder == "orjson" else json.loads
    with _connect(job.url) as conn:
        position, events = 1, 0
        clock = Clock()
        while rows := conn.execute(READ_CATEGORY, _read_params(job, position)).fetchall():
            if job.decode:
                for row in rows:
                    loads(row[5])
                    loads(row[6])
            events += len(rows)
            position = rows[-1][0] + 1
        return clock.figures(events)


def async_read_loop(job: Job) -> dict[str, Any]:
    """The same loop with psycopg's async connection under anyio (what projector is built on)."""

    async def loop() -> dict[str, Any]:
        conn = await psycopg.AsyncConnection.connect(job.url, autocommit=True)
        async with conn:
            await conn.execute(SESSION_SETTINGS)
            position, events = 1, 0
            clock = Clock()
            while True:
                cursor = await conn.execute(READ_CATEGORY, _read_params(job, position))
                rows = await cursor.fetchall()
                if not rows:
                    return clock.figures(events)
                events += len(rows)
                position = rows[-1][0] + 1

    return anyio.run(loop)


def group_read_loop(job: Job) -> dict[str, Any]:
    """Message DB's (or the store's) ``get_category_messages`` with group arguments."""
    with _connect(job.url) as conn:
        position, events = 1, 0
        clock = Clock()
        while True:
            params = (job.category, position, job.batch_size, job.member, job.size)
            rows = conn.execute(GROUP_READ, params).fetchall()
            if not rows:
                break
            events += len(rows)
            position = rows[-1][4] + 1  # (id, stream_name, type, position, global_position, ...)
        return clock.figures(events)


def member_read_loop(job: Job) -> dict[str, Any]:
    """projector's own group-member read statement in a plain loop (no projector code)."""
    assert job.size is not None
    statement = read_member(job.size)
    _member_index(job)
    with _connect(job.url) as conn:
        position, events = 1, 0
        clock = Clock()
        while True:
            params = {**_read_params(job, position), "member": job.member, "size": job.size}
            rows = conn.execute(statement, params).fetchall()
            found = [row for row in rows if row[1] is not None]
            events += len(found)
            if len(found) == job.batch_size:
                position = found[-1][1] + 1
            elif rows[0][0] is None or rows[0][0] < position:
                break  # read to the head
            else:
                position = rows[0][0] + 1
        return clock.figures(events)


def upsert_loop(job: Job) -> dict[str, Any]:
    """Read a batch, then upsert one read-model row per stream span, one statement at a time."""
    loads = json.loads
    upsert = _upsert_statement(job.table)
    with _connect(job.url) as conn:
        _create_read_model(conn, job.table)
        position, events = 1, 0
        clock = Clock()
        while rows := conn.execute(READ_CATEGORY, _read_params(job, position)).fetchall():
            spans: dict[str, list[tuple[Any, ...]]] = {}
            for row in rows:
                spans.setdefault(row[3], []).append(row)
            for name, span in spans.items():
                balance = sum(loads(row[5])["amount"] for row in span)
                conn.execute(upsert, (name, span[-1][1], balance, len(span)))
            events += len(rows)
            position = rows[-1][0] + 1
        return {**clock.figures(events), **_read_model_totals(conn, job.table)}


# -- projector --------------------------------------------------------------------------------


def projector(job: Job) -> dict[str, Any]:
    """``Runner.run`` with one of the bench handlers, until caught up (or, for ``tail``, for
    ``warmup + seconds`` and a short drain), in a process tuned as `projector run` tunes its
    own."""
    collect_garbage_less_often()
    return anyio.run(_projector, job, backend_options=backend_options(settings_of(job)))


async def _projector(job: Job) -> dict[str, Any]:
    tally = Tally(window_seconds=job.seconds)
    pool = None
    if job.handler in ("transactional", "transactional_batch", "read_model_batch"):
        return await _transactional(job, tally)
    if job.handler in ("upsert", "batch"):
        with psycopg.connect(job.url, autocommit=True) as conn:
            _create_read_model(conn, job.table)
        pool = AsyncConnectionPool(
            job.url,
            min_size=job.pool_size,
            max_size=job.pool_size,
            kwargs={"autocommit": True},
            open=False,
        )
        await pool.open(wait=True)
    _member_index(job)
    if job.handler in ("batch", "noop_batch"):
        projection = _batch_projection(job, tally, pool)
    else:
        projection = Projection("bench", handler=_handler(job, tally, pool))
    runner = Runner(projection, settings_of(job))
    clock = Clock()
    tally.window_start = time.time() + job.warmup
    if job.handler == "tail":
        if job.notify:
            notify.install(job.url)
        try:
            with anyio.move_on_after(job.warmup + job.seconds + job.tail_sleep + 1.0):
                await runner.run()
        finally:
            if job.notify:
                with psycopg.connect(job.url, autocommit=True) as conn:
                    conn.execute(DROP_NOTIFY)
    else:
        await runner.run()
    result = clock.figures(tally.events)
    if pool is not None:
        await pool.close()
        with psycopg.connect(job.url) as conn:
            result.update(_read_model_totals(conn, job.table))
    if job.handler == "tail":
        result.update(tally.latency_figures(job.seconds))
    return result


async def _transactional(job: Job, tally: Tally) -> dict[str, Any]:
    """The upsert handler as a transactional (exactly-once) projection, on projector's pool:
    one upsert per span, or one for a whole batch of spans, with the positions recorded in
    ``projector.stream_positions`` (``transactional_batch``) or kept in the read model's own
    rows by a `GuardedUpsert` (``read_model_batch``)."""
    with psycopg.connect(job.url, autocommit=True) as conn:
        _create_read_model(conn, job.table)
    upsert = _upsert_statement(job.table)
    upsert_all = _upsert_statement(job.table, UPSERT_ALL)
    guarded = guarded_upsert(job.table)
    projection = Projection("bench")

    async def upserting(stream_name: str, events: list[Event], conn: Any) -> None:
        balance = sum(event.data["amount"] for event in events)
        await conn.execute(upsert, (stream_name, events[-1].position, balance, len(events)))
        tally.events += len(events)

    async def upserting_all(spans: dict[str, list[Event]], conn: Any) -> None:
        await conn.execute(upsert_all, _rows(spans))
        tally.events += sum(len(events) for events in spans.values())

    async def upserting_guarded(spans: dict[str, list[Event]], conn: Any) -> None:
        await guarded.execute(conn, spans)
        tally.events += sum(len(events) for events in spans.values())

    if job.handler == "transactional_batch":
        projection.transactional_batch(upserting_all)
    elif job.handler == "read_model_batch":
        projection.transactional_batch(positions="read_model")(upserting_guarded)
    else:
        projection.transactional(upserting)
    clock = Clock()
    await Runner(projection, settings_of(job)).run()
    result = clock.figures(tally.events)
    with psycopg.connect(job.url) as conn:
        result.update(_read_model_totals(conn, job.table))
    return result


def statements_loop(job: Job) -> dict[str, Any]:
    """A batch handler's SQL alone, without projector: the dataset read into memory and grouped
    into batches of spans first (untimed), then, one batch after the other on one connection,
    what each kind of batch handler sends (see `_statements`). The ratio of two is the ceiling
    the SQL sets on the ratio of their handlers' rates, whatever the pipeline does."""
    batches = _span_batches(job)
    with psycopg.connect(job.url, autocommit=True) as conn:
        _create_read_model(conn, job.table)

    async def write() -> dict[str, Any]:
        conn = await psycopg.AsyncConnection.connect(job.url, autocommit=True)
        async with conn:
            await conn.execute(SESSION_SETTINGS)
            # Each statement's milliseconds, per batch: where a batch's time goes.
            phases: dict[str, list[float]] = {}
            clock = Clock()
            await _statements(job, conn, batches, phases)
            figures = clock.figures(sum(sum(batch.rows[3]) for batch in batches))
        with psycopg.connect(job.url) as check:
            figures.update(_read_model_totals(check, job.table))
        medians = {phase: round(statistics.median(took), 2) for phase, took in phases.items()}
        return {**figures, "median_ms_per_batch": medians}

    return anyio.run(write, backend_options=backend_options(settings_of(job)))


async def _statements(
    job: Job, conn: Any, batches: list[SpanBatch], phases: dict[str, list[float]]
) -> None:
    """Every batch's statements, as the handler ``job.handler`` sends them:

    - ``batch`` (at least once): the read model's ``unnest`` upsert, autocommit;
    - ``transactional_batch``: the same upsert in a transaction, with projector's own
      statements around it: the streams' positions locked and read on first meeting, and all
      recorded in one compare-and-set statement before ``COMMIT; BEGIN``;
    - ``read_model_batch``: the `GuardedUpsert` statement of the same rows (one array element
      per event; the server's form: a MERGE from PostgreSQL 15 on), then ``COMMIT; BEGIN``."""
    upsert_all = _upsert_statement(job.table, UPSERT_ALL)
    merging = conn.info.server_version >= read_models.MERGE_SINCE
    upsert = guarded_upsert(job.table)
    guarded = upsert.merge_statement if merging else upsert.statement
    session, known = Session(conn), dict[str, int]()

    async def timed(phase: str, statement: Awaitable[object]) -> None:
        started = time.perf_counter()
        await statement
        phases.setdefault(phase, []).append((time.perf_counter() - started) * 1000)

    if job.handler != "batch":
        await conn.execute(BEGIN)
    for batch in batches:
        names, positions = batch.rows[0], batch.rows[1]
        if job.handler == "batch":
            await timed("upsert", conn.execute(upsert_all, batch.rows))
        elif job.handler == "read_model_batch":
            events = batch.events[:-1] if merging else batch.events  # MERGE needs no names
            await timed("guarded_upsert", conn.execute(guarded, events))
            await timed("commit", session.commit())
        else:
            unknown = [name for name in names if name not in known]
            if unknown:
                await timed("lock", _lock(session, job.group, unknown, known))
            await timed("upsert", conn.execute(upsert_all, batch.rows))
            recorded = dict(zip(names, positions, strict=True))
            expected = {name: known[name] for name in names}
            await timed(
                "positions_commit",
                session.record_all_and_commit(job.group, recorded, expected=expected),
            )
            known.update(recorded)
    if job.handler != "batch":
        await conn.execute(ROLL_BACK)


async def _lock(session: Session, group: str, names: list[str], known: dict[str, int]) -> None:
    known.update(await session.lock_positions(group, names))


@dataclass(frozen=True)
class SpanBatch:
    """A read batch as a batch handler's statements bind it: the read-model rows (one per
    stream span, as `_rows` makes them), and the events as `GuardedUpsert` binds them (one
    element per event, then the batch's stream names)."""

    rows: tuple[list[str], list[int], list[int], list[int]]
    events: tuple[list[str], list[int], list[int], list[int], list[str]]


def _span_batches(job: Job) -> list[SpanBatch]:
    """The dataset's read batches, each grouped by stream."""
    batches = []
    with _connect(job.url) as conn:
        position = 1
        while rows := conn.execute(READ_CATEGORY, _read_params(job, position)).fetchall():
            spans: dict[str, list[tuple[int, int]]] = {}
            for _, stream_position, _, stream_name, _, data, *_ in rows:
                spans.setdefault(stream_name, []).append(
                    (stream_position, orjson.loads(data)["amount"])
                )
            names = list(spans)
            events = [(name, *event) for name in names for event in spans[name]]
            batches.append(
                SpanBatch(
                    (
                        names,
                        [spans[name][-1][0] for name in names],
                        [sum(amount for _, amount in spans[name]) for name in names],
                        [len(spans[name]) for name in names],
                    ),
                    (
                        [name for name, _, _ in events],
                        [stream_position for _, stream_position, _ in events],
                        [amount for _, _, amount in events],
                        [1] * len(events),
                        names,
                    ),
                )
            )
            position = rows[-1][0] + 1
    return batches


@dataclass
class Tally:
    """What the bench handlers count: events handled, and commit-to-handler latencies of the
    events written in the window (``window_seconds`` from ``window_start``, wall clock)."""

    events: int = 0
    window_start: float = 0.0
    window_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def in_window(self, written: datetime) -> bool:
        """Whether an event written at ``written`` (its ``time``) counts."""
        return self.window_start <= _epoch(written) < self.window_start + self.window_seconds

    def record(self, events: list[Event]) -> None:
        """The latencies of those of ``events`` written in the window, handled now."""
        now = time.time()
        for event in events:
            if self.in_window(event.time):
                self.latencies.append(now - _epoch(event.time))

    def latency_figures(self, seconds: float) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        if not ordered:
            return {"events": 0, "seconds": seconds}

        def ms(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {
            "events": len(ordered),
            "seconds": seconds,
            "p50_ms": ms(0.50),
            "p90_ms": ms(0.90),
            "p99_ms": ms(0.99),
            "max_ms": round(ordered[-1] * 1000, 1),
        }


def _handler(
    job: Job, tally: Tally, pool: AsyncConnectionPool[Any] | None
) -> Callable[[str, list[Event]], Awaitable[None]]:
    async def noop(stream_name: str, events: list[Event]) -> None:
        tally.events += len(events)

    async def decode(stream_name: str, events: list[Event]) -> None:
        for event in events:
            event.data  # noqa: B018 (decoding is the point)
            event.metadata  # noqa: B018
        tally.events += len(events)

    upsert = _upsert_statement(job.table)

    async def upserting(stream_name: str, events: list[Event]) -> None:
        assert pool is not None
        balance = sum(event.data["amount"] for event in events)
        async with pool.connection() as conn:
            await conn.execute(upsert, (stream_name, events[-1].position, balance, len(events)))
        tally.events += len(events)

    async def tail(stream_name: str, events: list[Event]) -> None:
        tally.record(events)

    return {"noop": noop, "decode": decode, "upsert": upserting, "tail": tail}[job.handler]


def _epoch(written: datetime) -> float:
    """Message DB's ``time`` (the writing transaction's start, UTC with no zone) as wall-clock
    seconds; the tail writer commits one event per transaction, so it is within a millisecond
    of the commit."""
    return written.replace(tzinfo=UTC).timestamp()


def _batch_projection(job: Job, tally: Tally, pool: AsyncConnectionPool[Any] | None) -> Projection:
    """A batch handler, at least once: a no-op (``noop_batch``), or the upsert of every span of
    a batch in one statement through ``pool`` (``batch``)."""
    upsert_all = _upsert_statement(job.table, UPSERT_ALL)
    projection = Projection("bench")

    async def noop(spans: dict[str, list[Event]]) -> None:
        tally.events += sum(len(events) for events in spans.values())

    async def upserting_all(spans: dict[str, list[Event]]) -> None:
        assert pool is not None
        async with pool.connection() as conn:
            await conn.execute(upsert_all, _rows(spans))
        tally.events += sum(len(events) for events in spans.values())

    projection.batch(noop if job.handler == "noop_batch" else upserting_all)
    return projection


def guarded_upsert(table: str) -> GuardedUpsert:
    """The read model's rows (`READ_MODEL`) as a `GuardedUpsert` writes them, with the position
    of each stream's last event in its own row: the same rows `UPSERT` and `UPSERT_ALL`
    write."""
    return GuardedUpsert(
        table,
        add={
            "balance": Column("bigint", lambda event: event.data["amount"]),
            "events": Column("bigint", lambda event: 1),
        },
    )


def _rows(spans: dict[str, list[Event]]) -> tuple[list[str], list[int], list[int], list[int]]:
    """The read-model rows of a batch of spans, one per stream, as columns for ``unnest``."""
    names = list(spans)
    return (
        names,
        [spans[name][-1].position for name in names],
        [sum(event.data["amount"] for event in spans[name]) for name in names],
        [len(spans[name]) for name in names],
    )


# The trigger would wake every later run on this database: polling-only figures need it gone.
DROP_NOTIFY = "DROP TRIGGER IF EXISTS projector_notify ON message_store.messages"


def settings_of(job: Job) -> Settings:
    """The settings of the job's projector run: the job's own, then ``job.settings``."""
    values: dict[str, Any] = {
        "database_url": job.url,
        "categories": (job.category,),
        "group": job.group,
        "batch_size": job.batch_size,
        "tail_sleep": job.tail_sleep,
        # A tail runs for its window; a stream that keeps failing is never caught up.
        "until_caught_up": job.handler != "tail" and not job.failing_stream,
        **({} if job.size is None else {"member": job.member or 0, "group_size": job.size}),
        **job.settings,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# -- helpers ----------------------------------------------------------------------------------


def _member_index(job: Job) -> None:
    """Before the clock: the member index for the job's size built, or dropped, as it asks."""
    if job.size is None:
        return
    if job.member_index:
        member_index.install(job.url, job.size)
    else:
        member_index.drop(job.url, job.size)


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """One autocommit connection with projector's session settings (search_path, jit off)."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(SESSION_SETTINGS)
    return conn


def _read_params(job: Job, position: int) -> dict[str, Any]:
    return {"category": job.category, "position": position, "batch_size": job.batch_size}


def _upsert_statement(table: str, statement: str = UPSERT) -> bytes:
    """The upsert as plain bytes, as a handler would write it: psycopg caches a statement's
    parsing by its text, and a `sql.Composed` would be rendered again on every execute."""
    return sql.SQL(statement).format(table=sql.Identifier(table)).as_bytes(None)


def _create_read_model(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(sql.SQL(READ_MODEL).format(table=sql.Identifier(table)))
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))


def _read_model_totals(conn: psycopg.Connection[Any], table: str) -> dict[str, Any]:
    """The read model's rows and events, and a digest of every row, which two runs that wrote
    the same rows share."""
    row = conn.execute(sql.SQL(READ_MODEL_TOTALS).format(table=sql.Identifier(table))).fetchone()
    assert row is not None
    return {
        "read_model_rows": int(row[0]),
        "read_model_events": int(row[1]),
        "read_model_digest": str(row[2]),
    }


JOBS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "read_loop": read_loop,
    "async_read_loop": async_read_loop,
    "group_read_loop": group_read_loop,
    "member_read_loop": member_read_loop,
    "upsert_loop": upsert_loop,
    "statements_loop": statements_loop,
    "projector": projector,
}
