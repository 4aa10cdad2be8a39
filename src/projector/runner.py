"""Wiring and lifecycle of a projector process: pool, sources, sink, checkpoints, shutdown.

Stopping is cancellation (see `serve`): the sources stop reading at once, handler calls already
running get ``shutdown_timeout`` seconds to finish, and the checkpoint is committed once more,
shielded and time-boxed, whatever ended the run (a signal, a handler error, caught-up).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial

import anyio

from projector import checkpoints, database, groups
from projector.checkpoints import DEFAULT_FLUSH_TIMEOUT, Checkpoints, CheckpointWriter
from projector.errors import ConfigurationError, ProjectorError
from projector.lease import MemberLease
from projector.parked import ParkedStreams
from projector.projection import Projection
from projector.recovery import Recovery
from projector.settings import Settings, retry_policy
from projector.sink import Lane, StreamsSink
from projector.source import CategorySource
from projector.store import MessageStore

logger = logging.getLogger(__name__)


class Runner:
    """Keeps one projection up to date with its categories, for one group."""

    def __init__(self, projection: Projection, settings: Settings) -> None:
        self.projection = projection
        self.settings = settings
        self.categories = settings.categories or projection.categories
        self.group = settings.group or projection.name
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

    async def run(self) -> None:
        """Project until cancelled (or, with ``until_caught_up``, until caught up)."""
        settings = self.settings
        async with AsyncExitStack() as stack:
            pool = await stack.enter_async_context(
                database.open_pool(
                    self.database_url,
                    max_size=settings.pool_size,
                    connect_timeout=settings.connect_timeout,
                )
            )
            store = MessageStore(pool, member=settings.member, size=settings.group_size)
            await store.check_schema()
            lease = await stack.enter_async_context(
                MemberLease(
                    self.database_url,
                    self.group,
                    member=settings.member,
                    size=settings.group_size,
                    connect_timeout=settings.connect_timeout,
                )
            )
            writer = await self._checkpoint_writer(store, lease)
            parked = ParkedStreams(
                pool, self.group, member=settings.member, size=settings.group_size
            )
            recovery = Recovery(
                retry_policy(settings, self.projection.retry),
                parked,
                store,
                self.projection.handle,
                group=writer.name,
                batch_size=settings.batch_size,
                handler_timeout=settings.handler_timeout,
            )
            try:
                await self._project(store, writer, lease, recovery, await parked.owned())
            except BaseException:
                await self._final_flush(writer, failing=True)
                raise
            await self._final_flush(writer, failing=False)

    async def _checkpoint_writer(self, store: MessageStore, lease: MemberLease) -> CheckpointWriter:
        """Take the member's lock, check the group's size, and settle where each category starts.

        The size check and a new member's first checkpoints are one transaction under the
        group's start lock, so members started with different sizes cannot both pass it."""
        settings = self.settings
        await checkpoints.check_schema(lease.connection)
        await lease.acquire(standby=not settings.no_standby)
        member_checkpoints = Checkpoints(
            lambda: lease.connection, self.group, member=settings.member, size=settings.group_size
        )
        writer = CheckpointWriter(member_checkpoints, interval=settings.checkpoint_interval)
        conn = lease.connection
        async with conn.transaction():
            await conn.execute(groups.LOCK_GROUP_START, {"key": groups.group_start_key(self.group)})
            await groups.check_size(conn, self.group, settings.group_size)
            for category in self.categories:
                position = await self._start_position(store, member_checkpoints, category)
                writer.start_at(category, position)
        return writer

    async def _final_flush(self, writer: CheckpointWriter, *, failing: bool) -> None:
        """The last commit, shielded and time-boxed; while failing, its own error is logged so
        that the error that stopped the run is the one reported."""
        with anyio.move_on_after(DEFAULT_FLUSH_TIMEOUT, shield=True):
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

    async def _project(
        self,
        store: MessageStore,
        writer: CheckpointWriter,
        lease: MemberLease,
        recovery: Recovery,
        parked: frozenset[str],
    ) -> None:
        settings = self.settings
        sink = StreamsSink(
            self.projection.handle,
            max_concurrent_streams=settings.max_concurrent_streams,
            max_read_ahead=settings.max_read_ahead,
            on_failure=recovery.on_failure,
            handler_timeout=settings.handler_timeout,
            parked=parked,
        )
        async with sink:
            lanes = {category: sink.lane(category) for category in self.categories}
            sources = [
                CategorySource(
                    store,
                    lanes[category],
                    category,
                    position=writer.completed[category],
                    batch_size=settings.batch_size,
                    tail_sleep=settings.tail_sleep,
                    on_handled=partial(writer.advance, category),
                    outage_limit=settings.outage_limit,
                )
                for category in self.categories
            ]
            try:
                await self._pump(sources, writer, lease, recovery, sink, list(lanes.values()))
            finally:
                with anyio.CancelScope(shield=True):
                    await sink.stop(grace_period=settings.shutdown_timeout)

    async def _pump(
        self,
        sources: list[CategorySource],
        writer: CheckpointWriter,
        lease: MemberLease,
        recovery: Recovery,
        sink: StreamsSink,
        lanes: list[Lane],
    ) -> None:
        stop_at_tail = self.settings.until_caught_up
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(writer.run, name="projector-checkpoint-writer")
            tasks.start_soon(
                partial(lease.watch, outage_limit=self.settings.outage_limit),
                name="projector-lease-watch",
            )
            tasks.start_soon(recovery.serve_retries, sink, name="projector-parked-retries")
            tasks.start_soon(
                partial(recovery.report_stuck, sink, stuck_after=self.settings.stuck_after),
                name="projector-stuck-report",
            )
            async with anyio.create_task_group() as readers:
                for source in sources:
                    readers.start_soon(
                        partial(source.run, stop_at_tail=stop_at_tail),
                        name=f"projector-source-{source.category}",
                    )
            # Only reached with until_caught_up: every source has read to its tail.
            for lane in lanes:
                await lane.wait_empty()
            logger.info(
                "%s caught up",
                writer.name,
                extra={"action": "caught_up", "group": writer.name, **writer.completed},
            )
            tasks.cancel_scope.cancel()

    async def _start_position(
        self, store: MessageStore, member_checkpoints: Checkpoints, category: str
    ) -> int:
        position = await member_checkpoints.load(category)
        origin = "checkpoint"
        if position is None:
            if self.settings.from_tail:
                head = await store.category_head(category)
                position = groups.FIRST_POSITION if head is None else head + 1
                origin = "tail"
            else:
                position, origin = groups.FIRST_POSITION, "beginning"
            # Written at once: it records the group's size for members that start later, and
            # after --from-tail a restart without it must not replay history.
            await member_checkpoints.commit({category: position})
        logger.info(
            "%s starts %s at %d (from the %s)",
            member_checkpoints.name,
            category,
            position,
            origin,
            extra={
                "action": "source_started",
                "group": member_checkpoints.name,
                "category": category,
                "position": position,
                "origin": origin,
            },
        )
        return position


async def serve(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives, which cancels it gracefully."""
    async with anyio.create_task_group() as tasks:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info(
                        "received %s, stopping",
                        signal.Signals(signum).name,
                        extra={"action": "stopping", "signal": signal.Signals(signum).name},
                    )
                    tasks.cancel_scope.cancel()
                    return

        tasks.start_soon(stop_on_signal, name="projector-signals")
        await main()
        tasks.cancel_scope.cancel()
