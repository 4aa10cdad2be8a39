"""The child side of ``python -m bench failing``: projector with one stream whose every call
raises (``Job.fails``), or the same run with that stream healthy, measured on the other streams
(the healthy ones). Default retry settings: within a run the stream keeps retrying.

A stream that keeps failing never lets a runner be caught up, so these runs cannot end with
``until_caught_up``:

- a catch-up (``failing_catchup``) counts the healthy events in the database before its clock
  starts, and ends once its handler has counted as many; its time is taken at that call;
- a tail (``failing_tail``, while `bench.tail.SteadyWriter` writes) ends once every healthy
  event written in its window has been handled, or ``DRAIN_LIMIT`` seconds after the window:
  a stalled stream shows as events missed, not as a run that never ends.

Both report the failing stream's events handled (none while it fails), its failed calls, and
the group's held streams once the run is over.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import psycopg

from bench.jobs import Job, Tally, settings_of
from projector import Event, Projection
from projector.process import backend_options, collect_garbage_less_often
from projector.runner import Runner

DRAIN_LIMIT = 10.0  # seconds after a tail's window for its healthy events to be handled
# Seconds after the window before counting what was written in it: an event's `time` is its
# transaction's start, a little before the commit that makes it visible.
SETTLE = 0.5

HEALTHY_EVENTS = """
SELECT count(*) FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s AND stream_name <> %(failing)s
"""

HEALTHY_TIMES = """
SELECT time FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s AND stream_name <> %(failing)s
"""

HELD = """
SELECT stream_name, state, position FROM projector.held_streams
WHERE group_name = %s ORDER BY stream_name
"""


class RefusedError(Exception):
    """What the failing stream's handler raises, on every call."""


@dataclass
class Streams:
    """What a failing-stream run's handler counts: the healthy streams' events, apart from the
    failing stream's."""

    failing_stream: str
    fails: bool
    healthy: int = 0
    failing_handled: int = 0  # the failing stream's events, handled when it does not fail
    failed_calls: int = 0

    def healthy_events(self, stream_name: str, events: list[Event]) -> bool:
        """Whether ``events`` are healthy ones; a call of the failing stream raises here."""
        if stream_name != self.failing_stream:
            return True
        if self.fails:
            self.failed_calls += 1
            raise RefusedError(f"{stream_name} is refused on every call")
        self.failing_handled += len(events)
        return False

    def figures(self, job: Job) -> dict[str, Any]:
        return {
            "failing_stream": self.failing_stream,
            "fails": self.fails,
            "failing_stream_events": self.failing_handled,
            "failed_calls": self.failed_calls,
            "held": _held(job),
        }


def failing_catchup(job: Job) -> dict[str, Any]:
    """Catch up until the handler has counted every healthy event of the category."""
    collect_garbage_less_often()
    return anyio.run(_catchup, job, backend_options=backend_options(settings_of(job)))


async def _catchup(job: Job) -> dict[str, Any]:
    expected = _healthy_events(job)
    streams = Streams(job.failing_stream, job.fails)
    counted = anyio.Event()
    counted_at = cpu_at = 0.0

    async def count(stream_name: str, events: list[Event]) -> None:
        nonlocal counted_at, cpu_at
        if streams.healthy_events(stream_name, events):
            streams.healthy += len(events)
            if streams.healthy >= expected and not counted.is_set():
                counted_at, cpu_at = time.perf_counter(), time.process_time()
                counted.set()

    runner = Runner(Projection("bench", handler=count), settings_of(job))
    started, cpu_started = time.perf_counter(), time.process_time()
    await _run_until(runner, counted.wait)
    return {
        # More than expected would be healthy events handled twice.
        "events": streams.healthy,
        "expected": expected,
        "seconds": counted_at - started,
        # This process's CPU time meanwhile: less shaken than the wall clock by other work on
        # a shared machine (the server's own work is not in it).
        "cpu_seconds": round(cpu_at - cpu_started, 3),
        "cpu_us_per_event": round((cpu_at - cpu_started) / expected * 1e6, 2),
        **streams.figures(job),
    }


def failing_tail(job: Job) -> dict[str, Any]:
    """The healthy events' latencies, commit to handler call, of those written in the window
    (``warmup`` seconds after the start, for ``seconds``)."""
    collect_garbage_less_often()
    return anyio.run(_tail, job, backend_options=backend_options(settings_of(job)))


@dataclass
class Drain:
    """Set once the handler has handled the ``written`` healthy events of the window (known
    once it is over)."""

    written: int | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    def check(self, handled: int) -> None:
        if self.written is not None and handled >= self.written:
            self.done.set()


async def _tail(job: Job) -> dict[str, Any]:
    streams = Streams(job.failing_stream, job.fails)
    tally = Tally(window_seconds=job.seconds)
    drain = Drain()

    async def record(stream_name: str, events: list[Event]) -> None:
        if streams.healthy_events(stream_name, events):
            tally.record(events)
            drain.check(len(tally.latencies))

    runner = Runner(Projection("bench", handler=record), settings_of(job))
    tally.window_start = time.time() + job.warmup
    await _run_until(runner, partial(_drained, job, tally, drain))
    return {
        **tally.latency_figures(job.seconds),
        "healthy_written": await _written_in_window(job, tally),
        **streams.figures(job),
    }


async def _drained(job: Job, tally: Tally, drain: Drain) -> None:
    """Return once every healthy event written in the window has been handled, or at the
    latest ``DRAIN_LIMIT`` seconds after the window."""
    await anyio.sleep(max(0.0, tally.window_start + job.seconds + SETTLE - time.time()))
    drain.written = await _written_in_window(job, tally)
    drain.check(len(tally.latencies))
    with anyio.move_on_after(DRAIN_LIMIT - SETTLE):
        await drain.done.wait()


async def _run_until(runner: Runner, ended: Callable[[], Awaitable[object]]) -> None:
    """Run ``runner`` until ``ended`` returns, then stop it as a signal would: cancelled."""
    async with anyio.create_task_group() as group:
        group.start_soon(_run, runner, name="runner")
        await ended()
        group.cancel_scope.cancel()


async def _run(runner: Runner) -> None:
    await runner.run()
    raise RuntimeError("the runner ended on its own before its healthy events were handled")


def _healthy_events(job: Job) -> int:
    with psycopg.connect(job.url) as conn:
        row = conn.execute(HEALTHY_EVENTS, _failing(job)).fetchone()
    if row is None or not row[0]:
        raise SystemExit(f"bench: no healthy events in {job.category}: was it seeded?")
    return int(row[0])


async def _written_in_window(job: Job, tally: Tally) -> int:
    """The healthy events written in the window, by the test the handler makes."""
    conn = await psycopg.AsyncConnection.connect(job.url)
    async with conn:
        cursor = await conn.execute(HEALTHY_TIMES, _failing(job))
        return sum(1 for (written,) in await cursor.fetchall() if tally.in_window(written))


def _failing(job: Job) -> dict[str, str]:
    return {"category": job.category, "failing": job.failing_stream}


def _held(job: Job) -> list[list[Any]]:
    """The group's held streams: [stream, state, position of its first unhandled event]."""
    with psycopg.connect(job.url) as conn:
        rows = conn.execute(HELD, (job.group,)).fetchall()
    return [[str(stream), str(state), int(position)] for stream, state, position in rows]


JOBS: dict[str, Callable[[Job], dict[str, Any]]] = {
    "failing_catchup": failing_catchup,
    "failing_tail": failing_tail,
}
