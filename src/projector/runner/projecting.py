"""One tenure's projecting: a source per category reading into its lane, the sink handling
what they read, and the tasks beside them (the checkpoint writer, the lease's watch, the held
streams' replays, telemetry), until the run is cancelled, has caught up (``until_caught_up``),
or, in an elastic group, hands its buckets over.

A stop lets the handler calls running finish within ``shutdown_timeout``; a handover first
lets every batch read finish, so that the buckets' next owner is given none of it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup

from projector.errors import LeaseLostError, find_error
from projector.model.versions import Replaying
from projector.pipeline.batch_sink import BatchesSink
from projector.pipeline.calls import Batches, SpanHandler
from projector.pipeline.lane import Lane
from projector.pipeline.sink import StreamsSink
from projector.pipeline.source import OPEN_GATE, CategorySource
from projector.reconnecting import outlasting
from projector.runner.job import Job
from projector.runner.tenancy import Lease
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.runtime.dependencies import DependencyGate
from projector.runtime.failure_decisions import FailureDecisions
from projector.runtime.outage import Outage
from projector.runtime.replays import Replays
from projector.runtime.versions import VersionFollower
from projector.storage import notify
from projector.storage.database import Pool
from projector.storage.message_store import MessageStore
from projector.telemetry.health import State
from projector.telemetry.metrics import RunnerState
from projector.telemetry.run_telemetry import RunTelemetry
from projector.telemetry.stuck import report_stuck

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TenureParts:
    """What a tenure projects with, once it holds its streams."""

    pool: Pool
    store: MessageStore
    writer: CheckpointWriter
    lease: Lease
    decisions: FailureDecisions  # what a failed call becomes
    replays: Replays  # held streams replayed when due
    outage: Outage
    telemetry: RunTelemetry
    handle: SpanHandler | Batches  # what the sink calls
    gate: DependencyGate | None
    wake_up: bool  # the wake-up trigger is installed: listen for its notifications
    # Set when an elastic tenure should end gracefully: stop reading, drain, commit.
    ending: anyio.Event | None = None


class Projecting:
    """Projects one tenure: `run` returns once it is done, with the streams left parked."""

    def __init__(
        self, job: Job, parts: TenureParts, held: frozenset[str], replaying: Replaying
    ) -> None:
        """``held``: the streams held out of the read path as the tenure starts."""
        self._job = job
        self._parts = parts
        self._held = held
        self._replaying = replaying
        self.parked: frozenset[str] = frozenset()

    async def run(self) -> frozenset[str]:
        """Project until cancelled, caught up or handed over; the streams parked when it
        caught up (none otherwise)."""
        settings, parts = self._job.settings, self._parts
        sink = self._sink()
        async with sink:
            lanes = {c: sink.lane(c, parts.writer) for c in self._job.categories}
            sources = [self._source(lanes[category], category) for category in lanes]
            if parts.telemetry.metrics is not None:
                parts.telemetry.metrics.collect_from(
                    RunnerState(
                        sink,
                        lanes,
                        parts.writer,
                        parts.telemetry.health,
                        parts.replays,
                        settings.stuck_after,
                    )
                )
            lost = False
            try:
                await self._read_until_done(sources, sink, list(lanes.values()))
            except BaseException as exc:
                lost = find_error(exc, LeaseLostError) is not None
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop(sink, list(lanes.values()), lost=lost)
        return self.parked

    async def _stop(self, sink: StreamsSink, lanes: list[Lane], *, lost: bool) -> None:
        """Let the calls running finish within ``shutdown_timeout``, except when the right to
        project was ``lost``: then another runner may own these streams already, so the calls
        are cancelled at once (nothing they did could be committed anyway)."""
        grace = 0.0 if lost else self._job.settings.shutdown_timeout
        if self._parts.ending is not None and not lost:
            # An elastic tenure ends by handing its buckets over: it finishes what it has
            # read, so that the next owner is given none of it again.
            grace = await _drain(lanes, grace_period=grace)
        if not await sink.stop(grace_period=grace):
            _abandoned(self._parts.writer.name, sink, grace, lost=lost)

    def _sink(self) -> StreamsSink:
        settings, parts = self._job.settings, self._parts
        common: dict[str, Any] = {
            # Counted in events: the same memory bound at the head as in a catch-up (`lane`).
            "max_read_ahead": settings.max_read_ahead * settings.batch_size,
            "on_failure": parts.decisions.on_failure,
            "handler_timeout": settings.handler_timeout,
            "held": self._held,
            "observer": parts.telemetry.observer,
        }
        if isinstance(parts.handle, Batches):
            return BatchesSink(parts.handle, **common)
        return StreamsSink(
            parts.handle, max_concurrent_streams=settings.max_concurrent_streams, **common
        )

    def _source(self, lane: Lane, category: str) -> CategorySource:
        settings, parts = self._job.settings, self._parts
        return CategorySource(
            parts.store,
            lane,
            category,
            position=parts.writer.completed[category],
            batch_size=settings.batch_size,
            tail_sleep=settings.tail_sleep,
            outage_limit=settings.outage_limit,
            observer=parts.telemetry.observer,
            gate=parts.gate or OPEN_GATE,
        )

    async def _read_until_done(
        self, sources: list[CategorySource], sink: StreamsSink, lanes: list[Lane]
    ) -> None:
        """Read with every source, the tasks beside them running, until cancelled, handed
        over, or (``until_caught_up``) caught up."""
        settings, parts, health = self._job.settings, self._parts, self._parts.telemetry.health
        async with anyio.create_task_group() as tasks:
            await self._start_beside(tasks, sink, sources)
            health.state = State.RUNNING
            try:
                with anyio.CancelScope() as reading:
                    if parts.ending is not None:
                        tasks.start_soon(_cancel_when, parts.ending, reading)
                    async with anyio.create_task_group() as readers:
                        for source in sources:
                            readers.start_soon(
                                partial(source.run, stop_at_tail=settings.until_caught_up),
                                name=f"projector-source-{source.category}",
                            )
                if reading.cancel_called:
                    tasks.cancel_scope.cancel()  # a rebalance: `run` drains the lanes
                    return
                # Only reached with until_caught_up: every source has read to its tail.
                self.parked = await self._settle(lanes)
            finally:
                health.state = State.STOPPED
            _caught_up(parts.writer, self.parked)
            tasks.cancel_scope.cancel()

    async def _start_beside(
        self, tasks: TaskGroup, sink: StreamsSink, sources: list[CategorySource]
    ) -> None:
        """The tasks that run beside the reading, for as long as it lasts."""
        settings, parts = self._job.settings, self._parts
        writer, replays = parts.writer, parts.replays
        tasks.start_soon(writer.run, name="projector-checkpoint-writer")
        tasks.start_soon(parts.lease.until_lost, name="projector-lease-lost")
        tasks.start_soon(replays.serve, sink, name="projector-held-streams")
        follower = VersionFollower(parts.pool, self._job.group, self._replaying)
        tasks.start_soon(follower.run, name="projector-version-follower")
        stuck = partial(report_stuck, group=writer.name, stuck_after=settings.stuck_after)
        tasks.start_soon(stuck, sink, replays, name="projector-stuck-report")
        if parts.gate is not None:
            await tasks.start(parts.gate.run, name="projector-dependencies")
        await tasks.start(
            partial(
                parts.telemetry.run,
                settings,
                pool=parts.pool,
                share=parts.store.share,
                handled=lambda: writer.completed,
                sink=sink,
                replays=replays,
            ),
            name="projector-telemetry",
        )
        await self._listen(tasks, sources)

    async def _settle(self, lanes: list[Lane]) -> frozenset[str]:
        """Every source has read to its tail: wait until what was read is handled. Held
        streams are caught up too once none is left to retry (a replay that ends rejoins its
        stream with what the sink kept meanwhile: the lanes drain after). The streams left
        parked."""
        for lane in lanes:
            await lane.wait_empty()
        parked = await outlasting(
            self._parts.replays.settled,
            doing="waiting for held streams",
            limit=self._job.settings.outage_limit,
            on_retry=self._parts.telemetry.observer.reconnecting,
        )
        for lane in lanes:
            await lane.wait_empty()
        return parked

    async def _listen(self, tasks: TaskGroup, sources: list[CategorySource]) -> None:
        """Wake the sources as events are written, when the opt-in trigger is installed."""
        if not self._parts.wake_up:
            return
        by_category = {source.category: source for source in sources}

        def wake(category: str) -> None:
            source = by_category.get(category)
            if source is not None:
                source.wake()

        url, limit = self._job.database_url, self._job.settings.outage_limit
        listen = partial(notify.listen, url, wake, outage_limit=limit)
        await tasks.start(listen, name="projector-notify-listener")


def _caught_up(writer: CheckpointWriter, parked: frozenset[str]) -> None:
    logger.info(
        "%s caught up%s",
        writer.name,
        f", but {len(parked)} stream(s) are parked" if parked else "",
        extra={
            "action": "caught_up",
            "group": writer.name,
            "parked": sorted(parked),
            **writer.completed,
        },
    )


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _drain(lanes: list[Lane], *, grace_period: float) -> float:
    """Let every batch already submitted finish, for up to ``grace_period`` seconds, so that
    the last commit passes all of them; the seconds left of the grace period."""
    deadline = anyio.current_time() + grace_period
    with anyio.move_on_after(grace_period):
        for lane in lanes:
            await lane.wait_empty()
    return max(0.0, deadline - anyio.current_time())


def _abandoned(name: str, sink: StreamsSink, grace_period: float, *, lost: bool) -> None:
    """Say which handler calls a stop cancels, having waited ``grace_period`` for them (none,
    when the right to project was ``lost``)."""
    running = sorted(
        (stream for stream in sink.troubled(longer_than=0) if stream.state == "running"),
        key=lambda stream: -stream.seconds,
    )
    calls = ", ".join(f"{stream.stream_name} ({stream.seconds:.1f} s)" for stream in running)
    message = (
        "%s: %d handler call(s) are cancelled at once, the right to project their streams "
        "lost (their next owner delivers their events again): %s"
        if lost
        else f"%s: %d handler call(s) still running after shutdown_timeout ({grace_period:g} s) "
        "are cancelled, their events delivered again at the next start: %s"
    )
    logger.warning(
        message,
        name,
        len(running),
        calls,
        extra={
            "action": "calls_abandoned",
            "group": name,
            "lost": lost,
            "calls": {stream.stream_name: round(stream.seconds, 1) for stream in running},
        },
    )
