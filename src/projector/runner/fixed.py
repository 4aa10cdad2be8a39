"""A fixed group's member (member ``i`` of ``n``, or the one member of a plain group): its
tenure holds the member's lock (`projector.storage.member_locks`), and ends when the lock's session
does; the next tenure takes the lock again, or waits as the standby of whoever took it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from projector.model.events import member_name
from projector.model.share import Share
from projector.runner.job import Job
from projector.runner.starts import start_position
from projector.runner.tenancy import Term
from projector.runtime import group_kind
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.storage import checkpoints, member_index
from projector.storage.checkpoints import Checkpoints
from projector.storage.database import Pool
from projector.storage.held import HeldStreams
from projector.storage.member_locks import MemberLock
from projector.storage.message_store import MessageStore
from projector.telemetry.run_telemetry import RunTelemetry


class FixedTenancy:
    """Member ``settings.member`` of a group of ``settings.group_size``."""

    def __init__(self, job: Job, pool: Pool) -> None:
        self._job = job
        self._pool = pool
        settings = job.settings
        self._share = Share.member(settings.member, settings.group_size)
        self._store = MessageStore(pool, self._share)

    @property
    def name(self) -> str:
        settings = self._job.settings
        return member_name(self._job.group, settings.member, settings.group_size)

    @asynccontextmanager
    async def joined(self, telemetry: RunTelemetry) -> AsyncIterator[None]:
        """Nothing: a fixed member is a lock, taken at each tenure's start."""
        yield

    @asynccontextmanager
    async def tenure(self, connected: Callable[[], None]) -> AsyncIterator[Term]:
        job, settings = self._job, self._job.settings
        lease = MemberLock(
            job.database_url,
            job.group,
            member=settings.member,
            size=settings.group_size,
            connect_timeout=settings.connect_timeout,
            lease_timeout=settings.lease_timeout,
        )
        async with lease:
            connected()
            writer = await self._checkpoint_writer(lease)
            if settings.group_size > 1:
                await member_index.report(self._pool, size=settings.group_size, member=writer.name)
            held = HeldStreams(self._pool, job.group, self._share, lease.fence())
            yield Term(self._store, writer, lease, held)

    async def _checkpoint_writer(self, lease: MemberLock) -> CheckpointWriter:
        """Take the member's lock, check the group's size, and settle where each category starts.

        The size check and a new member's first checkpoints are one transaction under the
        group's start lock, so members started with different sizes cannot both pass it."""
        job, settings = self._job, self._job.settings
        member_checkpoints = Checkpoints(
            lambda: lease.connection, job.group, member=settings.member, size=settings.group_size
        )
        writer = CheckpointWriter(member_checkpoints, interval=settings.checkpoint_interval)
        await checkpoints.check_schema(lease.connection)
        await lease.acquire(standby=settings.standby)
        conn = lease.connection
        async with conn.transaction():
            await checkpoints.lock_group_start(conn, job.group)
            await group_kind.check_size(conn, job.group, settings.group_size)
            for category in job.categories:
                position = await start_position(job, self._store, member_checkpoints, category)
                writer.start_at(category, position)
        return writer
