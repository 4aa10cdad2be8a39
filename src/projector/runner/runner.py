"""Wiring and lifecycle of a projector process: pool, sources, sink, checkpoints, shutdown.

Stopping is cancellation (see `projector.process.serve`): the sources stop reading at once,
handler calls already running get ``shutdown_timeout`` seconds to finish, and the checkpoint is
committed once more, shielded and time-boxed (`projector.cleanup`), whatever ended the run (a
signal, a handler error, caught-up).

How a handler error ends a run: it does not, by itself. The sink hands every failed call to
`FailureDecisions.on_failure`, which retries the stream with backoff, waits out an outage of
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

Watching the run (health, metrics, summary, progress) is the business of
`projector.telemetry.run_telemetry.RunTelemetry`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial

import anyio

from projector import cleanup
from projector.errors import (
    DatabaseLoginError,
    DatabaseUnavailableError,
    LeaseLostError,
    ProjectorError,
    find_error,
)
from projector.model.failures import RESTART
from projector.model.projection import Projection
from projector.model.versions import Replaying, Version, VersionState, answering
from projector.pipeline.calls import Batches, SpanHandler
from projector.reconnecting import Reconnecting
from projector.runner.elastic import ElasticTenancy
from projector.runner.fixed import FixedTenancy
from projector.runner.job import Job
from projector.runner.projecting import Projecting, TenureParts
from projector.runner.tenancy import Tenancy, Term
from projector.runtime import versions
from projector.runtime.batching import BatchRun, one_stream, split_on_failure
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.runtime.dependencies import DependencyGate, UpstreamMeter
from projector.runtime.exactly_once import ExactlyOnce
from projector.runtime.exactly_once_batch import ExactlyOnceBatch, GuardedBatch
from projector.runtime.failure_decisions import FailureDecisions
from projector.runtime.outage import PROBE_TIMEOUT, Outage
from projector.runtime.replays import Replays
from projector.settings import Settings, retry_policy
from projector.storage import checkpoints, database, notify
from projector.storage.database import Pool, RevivingPool
from projector.storage.message_store import MessageStore
from projector.telemetry.progress import BarFactory
from projector.telemetry.run_telemetry import RunTelemetry
from projector.telemetry.tracing import traced

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AcrossTenures:
    """What a runner keeps from one tenure to the next: its pool, its way of holding its
    streams, what watches it, and whether the database is away (an outage outlives the tenure
    it ended)."""

    pool: Pool
    tenancy: Tenancy
    telemetry: RunTelemetry
    outage: Outage


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
        self.job = Job.of(projection, settings)
        self.projection = projection
        self.settings = settings
        self.progress_bar = progress_bar
        self.group = self.job.group
        self.categories = self.job.categories
        self.database_url = self.job.database_url
        self.version: Version | None = None  # as recorded when the run started (None: none is)
        self._replaying = Replaying()
        # The streams parked when the last catch-up ended (``until_caught_up``): not handled.
        self.parked: frozenset[str] = frozenset()

    async def run(self) -> None:
        """Project until cancelled (or, with ``until_caught_up``, until caught up).

        The pool, the schema check and the metrics endpoint come first, once: a database that
        does not answer yet is waited for up to ``start_wait`` (`_first_contact`); one that
        cannot work as given (an unknown host, a refused login), or lacks projector's tables,
        ends the run at once with its error. After that, a start cut short by the database
        going away (a standby's wait included) starts again, for up to ``outage_limit``, and
        so does a runner whose lock's session was lost (the end of its tenure, see
        `projector.storage.member_locks`): from the committed checkpoints, or as the standby of
        whoever took the member meanwhile. How the projecting ends is
        `projector.runner.projecting`'s business (and this module's docstring).
        """
        settings = self.settings
        async with AsyncExitStack() as stack:
            pool = await self._first_contact(stack)
            # `projector.replaying` answers for this projection until the run ends (each
            # tenure's `VersionFollower` keeps the answer current).
            stack.enter_context(answering(self._replaying))
            # The one place a runner tells a fixed group from an elastic one.
            tenancy: Tenancy = (
                ElasticTenancy(self.job, pool) if settings.elastic else FixedTenancy(self.job, pool)
            )
            telemetry = RunTelemetry.for_run(settings, tenancy.name, progress_bar=self.progress_bar)
            await stack.enter_async_context(telemetry.endpoint(settings))
            outage = Outage(
                partial(database.probe, self.database_url, connect_timeout=PROBE_TIMEOUT),
                limit=settings.outage_limit,
                observer=telemetry.observer,
                on_back=pool.reconnect_now,
            )
            await stack.enter_async_context(tenancy.joined(telemetry))
            await self._tenures(AcrossTenures(pool, tenancy, telemetry, outage), pool)

    async def _tenures(self, across: AcrossTenures, pool: RevivingPool) -> None:
        """Tenure after tenure, until one ends the run, with one outage probe throughout: an
        outage outlives the tenure it ended, and the next tenure starts as soon as the probe
        finds the database back. A tenure's failure is raised as itself, not inside the
        probe's task group."""
        retries = Reconnecting(
            f"starting {across.tenancy.name}",
            limit=self.settings.outage_limit,
            on_retry=across.telemetry.observer.reconnecting,
            policy=RESTART,
            pause=across.outage.retry_after,
        )

        def connected() -> None:
            retries.succeeded()
            # The database answered the lock's new session: whatever the pool put off (an
            # outage too short for the probe to see) is tried now.
            pool.reconnect_now()

        failure: Exception | None = None
        async with anyio.create_task_group() as watching:
            watching.start_soon(across.outage.probe_while_away, name="projector-outage-probe")
            try:
                while True:
                    try:
                        if not await self._attempt(across, connected):
                            break
                    except _StartCutShort as exc:
                        await retries.failed(exc)
            except Exception as exc:
                failure = exc  # raised once the probe is stopped, outside its task group
            watching.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _first_contact(self, stack: AsyncExitStack) -> RevivingPool:
        """The pool, once the database answers, has projector's tables and admits the
        projection's version (`_admit`). A database that does not answer yet (a restart, a
        server still starting, or one that went away again between these steps) is waited
        for, for up to ``start_wait`` seconds (`reconnecting` logged); a URL that cannot work
        (DatabaseLoginError), missing tables and a refused version fail at once. The pool
        closes with ``stack``."""
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
                    await MessageStore(pool).check_schema()
                    await self._admit(pool)
                    stack.push_async_exit(attempt.pop_all())
            except DatabaseLoginError:
                raise
            except DatabaseUnavailableError as exc:
                if not settings.start_wait:
                    raise
                await retries.failed(exc)
                continue
            retries.succeeded()
            return pool

    async def _admit(self, pool: Pool) -> None:
        """Check that the projection's version may run (setting up the first one)."""
        async with database.pooled(pool, doing="checking the projection's version") as conn:
            await checkpoints.check_schema(conn)
            self.version = await versions.admit(conn, self.projection, self.group)
        self._replaying.value = (
            self.version is not None and self.version.state is VersionState.BUILDING
        )

    async def _attempt(self, across: AcrossTenures, connected: Callable[[], None]) -> bool:
        """One tenure: take the member and project; True when the lock's session was lost.
        Calls ``connected()`` once the lock's session is open (a standby may wait long after)."""
        failure: DatabaseUnavailableError | None = None
        async with AsyncExitStack() as stack:
            try:
                parts, held = await self._start(stack, across, connected)
            except DatabaseUnavailableError as exc:
                failure = exc  # raised once the stack is closed, outside its task groups
            else:
                return await self._project_and_flush(parts, held)
        raise _StartCutShort(str(failure)) from failure

    async def _start(
        self, stack: AsyncExitStack, across: AcrossTenures, connected: Callable[[], None]
    ) -> tuple[TenureParts, frozenset[str]]:
        """Everything before the first read: the right to project (a member's lock, or
        buckets), the checkpoints, the held streams, the span handler. Nothing is handled yet,
        so all of it can be done again."""
        term = await stack.enter_async_context(across.tenancy.tenure(connected))
        return await self._parts(stack, across, term)

    async def _parts(
        self, stack: AsyncExitStack, across: AcrossTenures, term: Term
    ) -> tuple[TenureParts, frozenset[str]]:
        """A tenure's parts beside its term: the span handler, the care of failing streams,
        the dependency gate, and the streams held now."""
        settings, pool, writer = self.settings, across.pool, term.writer
        handle = traced(await self._handler(stack, pool), group=writer.name)
        decisions = FailureDecisions(
            retry_policy(settings, self.projection.retry),
            term.held,
            across.outage,
            group=writer.name,
        )
        replays = Replays(
            term.held,
            term.store,
            one_stream(handle.handle) if isinstance(handle, Batches) else handle,
            across.outage,
            decisions,
            group=writer.name,
            batch_size=settings.batch_size,
            handler_timeout=settings.handler_timeout,
        )
        gate = self._dependency_gate(pool, across.telemetry, writer.name)
        # Asked here, not once projecting: the database going away now starts the tenure again.
        wake_up = await notify.installed(term.lease.connection)
        parts = TenureParts(
            pool,
            term.store,
            writer,
            term.lease,
            decisions,
            replays,
            across.outage,
            across.telemetry,
            handle,
            gate,
            wake_up,
            term.ending,
        )
        look = await term.held.look()
        return parts, frozenset(stream.stream_name for stream in look.streams)

    async def _project_and_flush(self, parts: TenureParts, held: frozenset[str]) -> bool:
        """Project, then commit the checkpoint a last time; True when the right to project was
        lost (the lock's session, or buckets), which ends the tenure with nothing more
        committed (see `projector.storage.member_locks`)."""
        try:
            self.parked = await Projecting(self.job, parts, held, self._replaying).run()
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
            exactly_once = ExactlyOnce(projection, pool, self.group)
            return (await stack.enter_async_context(exactly_once)).handle
        return projection.handle

    async def _batch_run(self, stack: AsyncExitStack, pool: Pool) -> BatchRun:
        """One call of a batch projection: at least once, or in a transaction that records
        the streams' positions (or leaves them to the read model's guarded rows)."""
        projection = self.projection
        if not projection.is_transactional:
            return projection.handle_batch
        if projection.positions == "read_model":
            guarded = GuardedBatch(projection, pool, self.group)
            return (await stack.enter_async_context(guarded)).run
        exactly_once = ExactlyOnceBatch(projection, pool, self.group)
        return (await stack.enter_async_context(exactly_once)).run

    def _dependency_gate(
        self, pool: Pool, telemetry: RunTelemetry, name: str
    ) -> DependencyGate | None:
        """The gate of a projection with dependencies; health shows its pauses."""
        projection, health = self.projection, telemetry.health
        if not projection.depends_on:
            return None
        return DependencyGate(
            UpstreamMeter(pool, projection.depends_on).measure,
            group=name,
            on_pause=(health.dependency_paused, projection.on_pause),
            on_resume=(health.dependency_resumed, projection.on_resume),
            outage_limit=self.settings.outage_limit,
            on_retry=telemetry.observer.reconnecting,
        )

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
