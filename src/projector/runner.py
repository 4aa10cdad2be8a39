"""Wiring and lifecycle of a projector process: pool, sources, sink, checkpoints, shutdown.

Stopping is cancellation (see `projector.process.serve`): the sources stop reading at once,
handler calls already running get ``shutdown_timeout`` seconds to finish, and the checkpoint is
committed once more, shielded and time-boxed (`projector.cleanup`), whatever ended the run (a
signal, a handler error, caught-up).

How a handler error ends a run: it does not, by itself. The sink hands every failed call to
`Recovery.on_failure`, which retries the stream with backoff, waits out an outage of
projector's database without counting it (`outage`), or parks the stream once its attempts are
used up; the other streams go on meanwhile. Only a `Stop` decision (``on_exhausted="stop"``
once the attempts are used up, or at once for a `PoisonEvent` under it) ends the run: the sink
schedules no more calls and raises HandlerError; calls of other streams still running are
cancelled as the sink closes (their batches are not done, so their events are redelivered);
the checkpoint is committed a last time, up to the batches fully handled; and `run` raises the
HandlerError (the CLI exits 1 with it). Projector's own failures end a run the same way: the
database away for longer than ``outage_limit``, or a start that cannot complete.

A projection with dependencies gets a `DependencyGate`, measured by a task of its own and asked
by every source before it submits a batch.

Watching the run (health, metrics, summary, progress) is `projector.ops.watching.Watchers`'
business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from projector import cleanup
from projector.errors import (
    ConfigurationError,
    DatabaseLoginError,
    DatabaseUnavailableError,
    ProjectorError,
    find_error,
)
from projector.model.events import FIRST_POSITION, member_name
from projector.model.failures import RESTART
from projector.model.projection import Projection
from projector.model.share import Share
from projector.model.versions import Replaying, Version, VersionState, answering
from projector.ops import groups
from projector.ops.health import State
from projector.ops.metrics import RunnerState
from projector.ops.progress import BarFactory
from projector.ops.tracing import traced
from projector.ops.watching import Watchers
from projector.pipeline.batch_sink import BatchesSink
from projector.pipeline.calls import Batches, SpanHandler
from projector.pipeline.lane import Lane
from projector.pipeline.sink import StreamsSink
from projector.pipeline.source import OPEN_GATE, CategorySource
from projector.reconnecting import Reconnecting, outlasting
from projector.runtime import versions
from projector.runtime.batching import BatchRun, one_stream, split_on_failure
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.runtime.dependencies import DependencyGate, UpstreamMeter
from projector.runtime.elastic import ElasticMember, start_tenure
from projector.runtime.exactly_once import ExactlyOnce
from projector.runtime.exactly_once_batch import ExactlyOnceBatch, GuardedBatch
from projector.runtime.outage import PROBE_TIMEOUT, Outage
from projector.runtime.recovery import Recovery
from projector.runtime.versions import VersionWatch
from projector.settings import Settings, retry_policy
from projector.storage import checkpoints, database, member_index, notify
from projector.storage.checkpoints import Checkpoints
from projector.storage.database import Connection, Pool, RevivingPool
from projector.storage.held import HeldStreams
from projector.storage.leases import LeaseLostError, MemberLease
from projector.storage.message_store import MessageStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lasting:
    """What a runner keeps from one tenure to the next: its pool and store, what watches it,
    whether the database is away (an outage outlives the tenure it ended), and, in an elastic
    group, its membership."""

    pool: Pool
    store: MessageStore
    watchers: Watchers
    outage: Outage
    elastic: ElasticMember | None = None


class TenureLease(Protocol):
    """What a tenure holds the right to project with: a member's lock, or leased buckets."""

    @property
    def connection(self) -> Connection: ...

    async def watch(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Parts:
    """A runner's parts once its member is acquired, for the loops that project."""

    pool: Pool
    store: MessageStore
    writer: CheckpointWriter
    lease: TenureLease
    recovery: Recovery
    outage: Outage
    watchers: Watchers
    handle: SpanHandler | Batches  # what the sink calls
    gate: DependencyGate | None
    wake_up: bool  # the wake-up trigger is installed: listen for its notifications
    # Set when an elastic tenure should end gracefully: stop reading, drain, commit.
    ending: anyio.Event | None = None


class _StartCutShort(DatabaseUnavailableError):
    """The database went away while a runner was starting (or waiting as a standby)."""


class Runner:
    """Keeps one projection up to date with its categories, for one group."""

    def __init__(
        self,
        projection: Projection,
        settings: Settings,
        *,
        progress_bar: BarFactory | None = None,
    ) -> None:
        """``progress_bar`` draws the catch-up progress on a terminal (the CLI gives rich's;
        without one there is none)."""
        self.projection = projection
        self.settings = settings
        self.progress_bar = progress_bar
        self.categories = settings.categories or projection.categories
        self.group = settings.group or projection.group
        if not self.categories:
            raise ConfigurationError(
                "no category to read: pass --category NAME (or PROJECTOR_CATEGORIES=a,b), "
                f"or give Projection({projection.name!r}, categories=[...])"
            )
        if not settings.database_url:
            raise ConfigurationError(
                "no database: pass --database-url postgresql://... or set PROJECTOR_DATABASE_URL"
            )
        self.database_url = settings.database_url
        # The streams parked when the last catch-up ended (``until_caught_up``): not handled.
        self.version: Version | None = None  # as recorded when the run started (None: none is)
        self._replaying = Replaying()
        self.parked: frozenset[str] = frozenset()
        if any(dependency.group == self.group for dependency in projection.depends_on):
            raise ConfigurationError(
                f"group {self.group!r} cannot depend on itself: run it under another --group, "
                f"or drop Dependency({self.group!r}) from the projection"
            )

    async def run(self) -> None:
        """Project until cancelled (or, with ``until_caught_up``, until caught up).

        The pool, the schema check and the metrics endpoint come first, once: a database that
        does not answer yet is waited for up to ``start_wait`` (`_first_contact`); one that
        cannot work as given (an unknown host, a refused login), or lacks projector's tables,
        ends the run at once with its error. After that, a start cut short by the database
        going away (a standby's wait included) starts again, for up to ``outage_limit``, and
        so does a runner whose lock's session was lost (the end of its tenure, see
        `projector.storage.leases`): from the committed checkpoints, or as the standby of
        whoever took the member meanwhile. How the projecting ends is `_project`'s business
        (and the module's docstring).
        """
        settings = self.settings
        async with AsyncExitStack() as stack:
            pool, store = await self._first_contact(stack)
            await self._admit(stack, pool)
            name = (
                self.group
                if settings.elastic
                else member_name(self.group, settings.member, settings.group_size)
            )
            watchers = Watchers.for_run(settings, name, progress_bar=self.progress_bar)
            await watchers.serve_endpoint(stack, settings)
            outage = Outage(
                partial(database.probe, self.database_url, connect_timeout=PROBE_TIMEOUT),
                limit=settings.outage_limit,
                observer=watchers.observer,
                on_back=pool.reconnect_now,
            )
            elastic = await self._join(stack, watchers) if settings.elastic else None
            if elastic is not None and watchers.metrics is not None:
                watchers.metrics.watch_buckets(elastic)
            await self._tenures(Lasting(pool, store, watchers, outage, elastic), pool, name)

    async def _tenures(self, lasting: Lasting, pool: RevivingPool, name: str) -> None:
        """Tenure after tenure, until one ends the run, with one outage probe throughout: an
        outage outlives the tenure it ended, and the next tenure starts as soon as the probe
        finds the database back. A tenure's failure is raised as itself, not inside the
        probe's task group."""
        retries = Reconnecting(
            f"starting {name}",
            limit=self.settings.outage_limit,
            on_retry=lasting.watchers.observer.reconnecting,
            policy=RESTART,
            pause=lasting.outage.retry_after,
        )

        def connected() -> None:
            retries.succeeded()
            # The database answered the lock's new session: whatever the pool put off (an
            # outage too short for the probe to see) is tried now.
            pool.reconnect_now()

        failure: Exception | None = None
        async with anyio.create_task_group() as watching:
            watching.start_soon(lasting.outage.watch, name="projector-outage-watch")
            try:
                while True:
                    try:
                        if not await self._attempt(lasting, connected):
                            break
                    except _StartCutShort as exc:
                        await retries.failed(exc)
            except Exception as exc:
                failure = exc  # raised once the probe is stopped, outside its task group
            watching.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _first_contact(self, stack: AsyncExitStack) -> tuple[RevivingPool, MessageStore]:
        """The pool, once the database answers and has projector's tables. A database that
        does not answer yet (a restart, a server still starting) is waited for, for up to
        ``start_wait`` seconds (`reconnecting` logged); a URL that cannot work
        (DatabaseLoginError) and missing tables fail at once. The pool closes with ``stack``."""
        settings = self.settings
        retries = Reconnecting(
            "connecting to the database to start",
            limit=settings.start_wait,
            policy=RESTART,
            limit_setting="start_wait",
        )
        while True:
            try:
                async with AsyncExitStack() as attempt:
                    pool = await attempt.enter_async_context(
                        database.open_pool(
                            self.database_url,
                            max_size=self._pool_size(),
                            connect_timeout=settings.connect_timeout,
                        )
                    )
                    store = MessageStore(pool, Share.member(settings.member, settings.group_size))
                    await store.check_schema()
                    stack.push_async_exit(attempt.pop_all())
            except DatabaseLoginError:
                raise
            except DatabaseUnavailableError as exc:
                if not settings.start_wait:
                    raise
                await retries.failed(exc)
                continue
            retries.succeeded()
            return pool, store

    async def _admit(self, stack: AsyncExitStack, pool: Pool) -> None:
        """Check that the projection's version may run (setting up the first one), and make
        `projector.replaying` answer for it until the run ends (each tenure's `VersionWatch`
        keeps the answer current)."""
        async with database.pooled(pool, doing="checking the projection's version") as conn:
            await checkpoints.check_schema(conn)
            self.version = await versions.admit(conn, self.projection, self.group)
        self._replaying.value = (
            self.version is not None and self.version.state is VersionState.BUILDING
        )
        stack.enter_context(answering(self._replaying))

    async def _join(self, stack: AsyncExitStack, watchers: Watchers) -> ElasticMember:
        """Join the elastic group, and heartbeat until the run ends; leaving releases the
        buckets after the last tenure's final commit (the stack closes in reverse). A join cut
        short by the database going away is tried again, for up to ``outage_limit``: this
        process reached the database already."""
        member = await outlasting(
            partial(self._joined, stack),
            doing=f"joining {self.group}",
            limit=self.settings.outage_limit,
            on_retry=watchers.observer.reconnecting,
        )
        beating = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(beating.cancel_scope.cancel)
        beating.start_soon(member.heartbeats, name="projector-heartbeats")
        return member

    async def _joined(self, stack: AsyncExitStack) -> ElasticMember:
        settings = self.settings
        conn = await database.connect(self.database_url, connect_timeout=settings.connect_timeout)
        async with conn:
            await checkpoints.check_schema(conn)
            await groups.check_elastic(conn, self.group)
        return await stack.enter_async_context(
            ElasticMember(
                self.database_url,
                self.group,
                buckets=settings.buckets,
                heartbeat=settings.heartbeat,
                lease=settings.bucket_lease,
                connect_timeout=settings.connect_timeout,
            )
        )

    async def _attempt(self, lasting: Lasting, connected: Callable[[], None]) -> bool:
        """One tenure: take the member and project; True when the lock's session was lost.
        Calls ``connected()`` once the lock's session is open (a standby may wait long after)."""
        failure: DatabaseUnavailableError | None = None
        async with AsyncExitStack() as stack:
            try:
                parts, held = await self._start(stack, lasting, connected)
            except DatabaseUnavailableError as exc:
                failure = exc  # raised once the stack is closed, outside its task groups
            else:
                return await self._project_and_flush(parts, held)
        raise _StartCutShort(str(failure)) from failure

    async def _start(
        self, stack: AsyncExitStack, lasting: Lasting, connected: Callable[[], None]
    ) -> tuple[Parts, frozenset[str]]:
        """Everything before the first read: the member's lock, the checkpoints, the held
        streams, the span handler. Nothing is handled yet, so all of it can be done again."""
        if lasting.elastic is not None:
            return await self._start_elastic(stack, lasting, lasting.elastic, connected)
        settings = self.settings
        pool, store = lasting.pool, lasting.store
        lease = await stack.enter_async_context(
            MemberLease(
                self.database_url,
                self.group,
                member=settings.member,
                size=settings.group_size,
                connect_timeout=settings.connect_timeout,
                lease_timeout=settings.lease_timeout,
            )
        )
        connected()
        writer = await self._checkpoint_writer(store, lease)
        if settings.group_size > 1:
            await member_index.report(pool, size=settings.group_size, member=writer.name)
        held = HeldStreams(pool, self.group, store.share)
        return await self._parts(stack, lasting, store, writer, lease, held)

    async def _parts(
        self,
        stack: AsyncExitStack,
        lasting: Lasting,
        store: MessageStore,
        writer: CheckpointWriter,
        lease: TenureLease,
        held: HeldStreams,
        ending: anyio.Event | None = None,
    ) -> tuple[Parts, frozenset[str]]:
        """What a fixed member's start and an elastic tenure's share: the span handler, the
        care of failing streams, the dependency gate, and the streams held now."""
        settings, pool = self.settings, lasting.pool
        handle = traced(await self._handler(stack, pool), group=writer.name)
        recovery = Recovery(
            retry_policy(settings, self.projection.retry),
            held,
            store,
            one_stream(handle.handle) if isinstance(handle, Batches) else handle,
            lasting.outage,
            group=writer.name,
            batch_size=settings.batch_size,
            handler_timeout=settings.handler_timeout,
        )
        gate = self._dependency_gate(pool, lasting.watchers, writer.name)
        # Asked here, not once projecting: the database going away now starts the tenure again.
        wake_up = await notify.installed(lease.connection)
        parts = Parts(
            pool,
            store,
            writer,
            lease,
            recovery,
            lasting.outage,
            lasting.watchers,
            handle,
            gate,
            wake_up,
            ending,
        )
        look = await held.look()
        return parts, frozenset(stream.stream_name for stream in look.streams)

    async def _start_elastic(
        self,
        stack: AsyncExitStack,
        lasting: Lasting,
        member: ElasticMember,
        connected: Callable[[], None],
    ) -> tuple[Parts, frozenset[str]]:
        """An elastic tenure's start: its buckets, where each starts, and a reader of them."""
        tenure = await member.next_tenure()
        connected()
        heads = {c: await lasting.store.category_head(c) for c in self.categories}
        for category, head in heads.items():
            if head is None:
                self._empty_category(self.group, category)
        start = await start_tenure(
            tenure,
            lasting.pool,
            heads,
            from_tail=self.settings.from_tail,
            checkpoint_interval=self.settings.checkpoint_interval,
        )
        return await self._parts(
            stack, lasting, start.store, start.writer, tenure, start.held, tenure.ending
        )

    async def _project_and_flush(self, parts: Parts, held: frozenset[str]) -> bool:
        """Project, then commit the checkpoint a last time; True when the lock's session was
        lost, which ends the tenure with nothing more committed (see `projector.storage.leases`)."""
        try:
            await self._project(parts, held)
        except BaseException as exc:
            if find_error(exc, LeaseLostError) is not None:
                return True
            await self._final_flush(parts.writer, failing=True)
            raise
        handing_over = parts.ending is not None and parts.ending.is_set()
        try:
            await self._final_flush(parts.writer, failing=False)
        except LeaseLostError:
            return True  # an elastic tenure's buckets were taken while it drained
        except DatabaseUnavailableError as exc:
            if not handing_over:
                raise
            _handover_uncommitted(parts.writer, exc)
        # An elastic tenure drained for a rebalance: the next one starts at once.
        return handing_over

    def _pool_size(self) -> int:
        """Transactional handlers each hold a pool connection for their call (a batch's, for
        the batch handlers)."""
        settings, projection = self.settings, self.projection
        if not projection.is_transactional:
            return settings.pool_size
        if projection.is_batch:
            return settings.pool_size + settings.max_concurrent_batches
        return settings.pool_size + settings.max_concurrent_streams

    async def _handler(self, stack: AsyncExitStack, pool: Pool) -> SpanHandler | Batches:
        """What the sink calls: the projection's span handler, or its batch handler with the
        limits of its calls; a transactional one in sessions that close with ``stack``."""
        settings, projection = self.settings, self.projection
        if projection.is_batch:
            return Batches(
                split_on_failure(await self._batch_run(stack, pool), group=self.group),
                max_streams=settings.batch_max_streams,
                max_calls=settings.max_concurrent_batches,
                linger=settings.batch_linger,
            )
        if projection.is_transactional:
            exactly_once = ExactlyOnce.running(projection, pool, self.group)
            return (await stack.enter_async_context(exactly_once)).handle
        return projection.handle

    async def _batch_run(self, stack: AsyncExitStack, pool: Pool) -> BatchRun:
        """One call of a batch projection: at least once, or in a transaction that records
        the streams' positions (or leaves them to the read model's guarded rows)."""
        projection = self.projection
        if not projection.is_transactional:
            return projection.handle_batch
        if projection.positions == "read_model":
            guarded = GuardedBatch.running(projection, pool, self.group)
            return (await stack.enter_async_context(guarded)).run
        exactly_once = ExactlyOnceBatch.running(projection, pool, self.group)
        return (await stack.enter_async_context(exactly_once)).run

    def _dependency_gate(self, pool: Pool, watchers: Watchers, name: str) -> DependencyGate | None:
        """The gate of a projection with dependencies; health shows its pauses."""
        projection, health = self.projection, watchers.health
        if not projection.depends_on:
            return None
        return DependencyGate(
            UpstreamMeter(pool, projection.depends_on).measure,
            group=name,
            on_pause=(health.dependency_paused, projection.on_pause),
            on_resume=(health.dependency_resumed, projection.on_resume),
            outage_limit=self.settings.outage_limit,
            on_retry=watchers.observer.reconnecting,
        )

    async def _checkpoint_writer(self, store: MessageStore, lease: MemberLease) -> CheckpointWriter:
        """Take the member's lock, check the group's size, and settle where each category starts.

        The size check and a new member's first checkpoints are one transaction under the
        group's start lock, so members started with different sizes cannot both pass it."""
        settings = self.settings
        member_checkpoints = Checkpoints(
            lambda: lease.connection, self.group, member=settings.member, size=settings.group_size
        )
        writer = CheckpointWriter(member_checkpoints, interval=settings.checkpoint_interval)
        await checkpoints.check_schema(lease.connection)
        await lease.acquire(standby=settings.standby)
        conn = lease.connection
        async with conn.transaction():
            await checkpoints.lock_group_start(conn, self.group)
            await groups.check_size(conn, self.group, settings.group_size)
            for category in self.categories:
                position = await self._start_position(store, member_checkpoints, category)
                writer.start_at(category, position)
        return writer

    async def _final_flush(self, writer: CheckpointWriter, *, failing: bool) -> None:
        """The last commit, shielded and time-boxed; while failing, its own error is logged so
        that the error that stopped the run is the one reported."""
        with cleanup.shielded("the final checkpoint commit", cleanup.FINAL_FLUSH):
            try:
                await writer.flush()
            except ProjectorError as exc:
                if not failing:
                    raise
                logger.error(
                    "the last checkpoint commit failed: %s",
                    exc,
                    extra={"action": "checkpoint_commit_failed"},
                )

    async def _project(self, parts: Parts, held: frozenset[str]) -> None:
        settings, sink = self.settings, self._sink(parts, held)
        async with sink:
            lanes = {category: sink.lane(category, parts.writer) for category in self.categories}
            sources = [
                self._source(parts, lanes[category], category) for category in self.categories
            ]
            if parts.watchers.metrics is not None:
                parts.watchers.metrics.watch(
                    RunnerState(
                        sink,
                        lanes,
                        parts.writer,
                        parts.watchers.health,
                        parts.recovery,
                        settings.stuck_after,
                    )
                )
            try:
                await self._pump(parts, sources, sink, list(lanes.values()))
            finally:
                with anyio.CancelScope(shield=True):
                    grace = settings.shutdown_timeout
                    if parts.ending is not None:
                        # An elastic tenure ends by handing its buckets over: it finishes what
                        # it has read, so that the next owner is given none of it again.
                        grace = await _drain(list(lanes.values()), grace_period=grace)
                    if not await sink.stop(grace_period=grace):
                        _abandoned(parts.writer.name, sink, settings.shutdown_timeout)

    def _sink(self, parts: Parts, held: frozenset[str]) -> StreamsSink:
        settings = self.settings
        common: dict[str, Any] = {
            # Counted in events: the same memory bound at the head as in a catch-up (`lane`).
            "max_read_ahead": settings.max_read_ahead * settings.batch_size,
            "on_failure": parts.recovery.on_failure,
            "handler_timeout": settings.handler_timeout,
            "held": held,
            "observer": parts.watchers.observer,
        }
        if isinstance(parts.handle, Batches):
            return BatchesSink(parts.handle, **common)
        return StreamsSink(
            parts.handle, max_concurrent_streams=settings.max_concurrent_streams, **common
        )

    def _source(self, parts: Parts, lane: Lane, category: str) -> CategorySource:
        settings = self.settings
        return CategorySource(
            parts.store,
            lane,
            category,
            position=parts.writer.completed[category],
            batch_size=settings.batch_size,
            tail_sleep=settings.tail_sleep,
            outage_limit=settings.outage_limit,
            observer=parts.watchers.observer,
            gate=parts.gate or OPEN_GATE,
        )

    async def _pump(
        self, parts: Parts, sources: list[CategorySource], sink: StreamsSink, lanes: list[Lane]
    ) -> None:
        settings, writer, recovery = self.settings, parts.writer, parts.recovery
        status = parts.watchers.health
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(writer.run, name="projector-checkpoint-writer")
            tasks.start_soon(parts.lease.watch, name="projector-lease-watch")
            tasks.start_soon(recovery.serve, sink, name="projector-held-streams")
            watch = VersionWatch(parts.pool, self.group, self._replaying)
            tasks.start_soon(watch.run, name="projector-version-watch")
            tasks.start_soon(
                partial(recovery.report_stuck, sink, stuck_after=settings.stuck_after),
                name="projector-stuck-report",
            )
            if parts.gate is not None:
                await tasks.start(parts.gate.run, name="projector-dependencies")
            await parts.watchers.start(
                tasks,
                self.settings,
                pool=parts.pool,
                share=parts.store.share,
                handled=lambda: writer.completed,
                sink=sink,
                recovery=recovery,
            )
            await self._listen(tasks, parts, sources)
            status.state = State.RUNNING
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
                    tasks.cancel_scope.cancel()  # a rebalance: `_project` drains the lanes
                    return
                # Only reached with until_caught_up: every source has read to its tail. Held
                # streams are caught up too once none is left to retry (a replay that ends
                # rejoins its stream with what the sink kept meanwhile: the lanes drain after).
                for lane in lanes:
                    await lane.wait_empty()
                self.parked = await outlasting(
                    recovery.settled,
                    doing="waiting for held streams",
                    limit=settings.outage_limit,
                    on_retry=parts.watchers.observer.reconnecting,
                )
                for lane in lanes:
                    await lane.wait_empty()
            finally:
                status.state = State.STOPPED
            logger.info(
                "%s caught up%s",
                writer.name,
                f", but {len(self.parked)} stream(s) are parked" if self.parked else "",
                extra={
                    "action": "caught_up",
                    "group": writer.name,
                    "parked": sorted(self.parked),
                    **writer.completed,
                },
            )
            tasks.cancel_scope.cancel()

    async def _listen(self, tasks: TaskGroup, parts: Parts, sources: list[CategorySource]) -> None:
        """Wake the sources as events are written, when the opt-in trigger is installed."""
        if not parts.wake_up:
            return
        by_category = {source.category: source for source in sources}

        def wake(category: str) -> None:
            source = by_category.get(category)
            if source is not None:
                source.wake()

        listen = partial(
            notify.listen, self.database_url, wake, outage_limit=self.settings.outage_limit
        )
        await tasks.start(listen, name="projector-notify-listener")

    async def _start_position(
        self, store: MessageStore, member_checkpoints: Checkpoints, category: str
    ) -> int:
        name = member_checkpoints.name
        head = await store.category_head(category)
        next_written = FIRST_POSITION if head is None else head + 1
        if head is None:
            self._empty_category(name, category)
        position = await member_checkpoints.load(category)
        origin = "checkpoint"
        if position is not None and position > next_written:
            _past_the_head(name, self.group, category, position, head)
        if position is None:
            if self.settings.from_tail:
                position, origin = next_written, "tail"
            else:
                position, origin = FIRST_POSITION, "beginning"
            # Written at once: it records the group's size for members that start later, and
            # after --from-tail a restart without it must not replay history.
            await member_checkpoints.commit({category: position})
        logger.info(
            "%s starts %s at %d (from the %s)",
            name,
            category,
            position,
            origin,
            extra={
                "action": "source_started",
                "group": name,
                "category": category,
                "position": position,
                "origin": origin,
            },
        )
        return position

    def _empty_category(self, name: str, category: str) -> None:
        """A category with no event yet is often a typo (names are case-sensitive): refuse it
        with ``require_events`` (by default, with ``until_caught_up``: there is nothing to
        catch up with), before any checkpoint is written; else say so and wait for its
        events."""
        settings = self.settings
        required = settings.require_events
        if required is None:
            required = settings.until_caught_up
        if required:
            instead = (
                "--no-require-events to catch up with the others"
                if settings.until_caught_up
                else "drop --require-events to wait for its first events"
            )
            raise ConfigurationError(
                f"category {category!r} has no events (names are case-sensitive): check "
                f"--category, or give {instead}"
            )
        logger.warning(
            "%s: category %s has no events yet (names are case-sensitive: a typo?); waiting "
            "for its first events",
            name,
            category,
            extra={"action": "category_empty", "group": name, "category": category},
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


def _abandoned(name: str, sink: StreamsSink, grace_period: float) -> None:
    """Say which handler calls a stop cancels, having waited ``grace_period`` for them."""
    running = sorted(
        (stream for stream in sink.troubled(longer_than=0) if stream.state == "running"),
        key=lambda stream: -stream.seconds,
    )
    calls = ", ".join(f"{stream.stream_name} ({stream.seconds:.1f} s)" for stream in running)
    logger.warning(
        "%s: %d handler call(s) still running after shutdown_timeout (%g s) are cancelled, "
        "their events delivered again at the next start: %s",
        name,
        len(running),
        grace_period,
        calls,
        extra={
            "action": "calls_abandoned",
            "group": name,
            "calls": {stream.stream_name: round(stream.seconds, 1) for stream in running},
        },
    )


def _handover_uncommitted(writer: CheckpointWriter, exc: DatabaseUnavailableError) -> None:
    """A rebalance's last commit lost the database: the run goes on (the next tenure starts
    once the database answers, within ``outage_limit``), and whoever takes the buckets given up
    starts from their last committed checkpoints, so what was handled since is delivered again:
    never skipped."""
    logger.warning(
        "%s: the last checkpoint commit before handing buckets over failed (%s); their next "
        "owner starts from the previous checkpoints: events since are delivered again",
        writer.name,
        exc,
        extra={
            "action": "handover_commit_failed",
            "group": writer.name,
            "committed": writer.committed,
            "completed": writer.completed,
        },
    )


def _past_the_head(name: str, group: str, category: str, position: int, head: int | None) -> None:
    logger.warning(
        "%s's checkpoint for %s is at %d, past the category's head (%s): the events written "
        "until the store reaches it will be skipped (`projector checkpoints set --group %s "
        "--category %s --to-head` puts it back at the head)",
        name,
        category,
        position,
        "empty" if head is None else head,
        group,
        category,
        extra={
            "action": "checkpoint_past_head",
            "group": name,
            "category": category,
            "position": position,
            "head": head,
        },
    )
