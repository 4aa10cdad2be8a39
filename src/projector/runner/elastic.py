"""An elastic group's member: it joins the group and heartbeats for the whole run
(`projector.runtime.elastic`); each tenure projects the buckets it holds, and ends when a
rebalance asks it to hand some over (it drains and commits first) or when it loses one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import anyio

from projector.reconnecting import outlasting
from projector.runner.job import Job
from projector.runner.starts import empty_category
from projector.runner.tenancy import Term
from projector.runtime import group_kind
from projector.runtime.elastic import ElasticMember, start_tenure
from projector.storage import checkpoints, database
from projector.storage.database import Pool
from projector.storage.message_store import MessageStore
from projector.telemetry.run_telemetry import RunTelemetry


class ElasticTenancy:
    """A member of elastic group ``job.group`` of ``settings.buckets`` buckets."""

    def __init__(self, job: Job, pool: Pool) -> None:
        self._job = job
        self._pool = pool
        self._heads = MessageStore(pool)  # where each category ends, for buckets new to it
        self._member: ElasticMember | None = None

    @property
    def name(self) -> str:
        return self._job.group

    @asynccontextmanager
    async def joined(self, telemetry: RunTelemetry) -> AsyncIterator[None]:
        """Join the group, and heartbeat for the block; leaving releases the buckets, after
        the last tenure's final commit (the runner leaves the block last). A join cut short by
        the database going away is tried again, for up to ``outage_limit``: this process
        reached the database already."""
        async with AsyncExitStack() as stack:
            member = await outlasting(
                partial(self._joined, stack),
                doing=f"joining {self._job.group}",
                limit=self._job.settings.outage_limit,
                on_retry=telemetry.observer.reconnecting,
            )
            async with anyio.create_task_group() as beating:
                beating.start_soon(member.heartbeats, name="projector-heartbeats")
                if telemetry.metrics is not None:
                    telemetry.metrics.collect_buckets(member)
                self._member = member
                try:
                    yield
                finally:
                    self._member = None
                    beating.cancel_scope.cancel()

    async def _joined(self, stack: AsyncExitStack) -> ElasticMember:
        job, settings = self._job, self._job.settings
        conn = await database.connect(job.database_url, connect_timeout=settings.connect_timeout)
        async with conn:
            await checkpoints.check_schema(conn)
            await group_kind.check_elastic(conn, job.group)
        return await stack.enter_async_context(
            ElasticMember(
                job.database_url,
                job.group,
                buckets=settings.buckets,
                heartbeat=settings.heartbeat,
                lease=settings.bucket_lease,
                connect_timeout=settings.connect_timeout,
            )
        )

    @asynccontextmanager
    async def tenure(self, connected: Callable[[], None]) -> AsyncIterator[Term]:
        """The tenure's buckets, where each starts, and a reader of them (the buckets are
        given up at the next tenure's start, or as the member leaves)."""
        if self._member is None:
            raise RuntimeError("an elastic tenancy begins a tenure only once joined")
        job = self._job
        tenure = await self._member.next_tenure()
        connected()
        heads = {c: await self._heads.category_head(c) for c in job.categories}
        for category, head in heads.items():
            if head is None:
                empty_category(job, job.group, category)
        start = await start_tenure(
            tenure,
            self._pool,
            heads,
            from_tail=job.settings.from_tail,
            checkpoint_interval=job.settings.checkpoint_interval,
        )
        yield Term(start.store, start.writer, tenure, start.held, tenure.ending)
