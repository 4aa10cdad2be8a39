"""Dependencies between groups: a projection handles an event only once every group it depends
on has handled every event before it in global order (Slipstream's checkpoint dependencies).

The upstream's handled frontier F, in global positions: each checkpoint row of the upstream
group says that every event of that member's partition of its category below ``position`` is
handled, so the first one it has not handled is the partition's first event from ``position``
on. F is the lowest of those first unhandled events; a member at its tail (none unhandled) does
not limit it, but F never passes the store's head at the measurement: an event written later
could be one the upstream has yet to handle. A downstream event at global position ``g`` is
admitted once ``g < F``.

The frontier comes from the upstream's *committed* checkpoints, so it trails what the upstream
has handled by up to its ``checkpoint_interval``. It orders what was committed when it was
measured: two transactions writing to different categories can commit out of global order, and
an event that becomes visible after a higher one was measured is not waited for.

The downstream also pauses while the upstream cannot be relied on to move: it has no
checkpoints yet, a member of it has no runner (no one holds its lock), or, with ``max_lag``, it
has more than that many unhandled events.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from projector.model.dependencies import Dependency, PauseCallback
from projector.model.events import FIRST_POSITION, Event, member_name
from projector.model.share import Share
from projector.reconnecting import outlasting
from projector.storage import buckets, checkpoints, database, member_locks, message_store
from projector.storage.checkpoints import CheckpointRow
from projector.storage.database import Connection, Pool
from projector.storage.message_store import Partition

logger = logging.getLogger(__name__)

DEPENDENCY_POLL = 0.5  # seconds between measurements of the upstream groups

@dataclass(frozen=True, slots=True)
class Upstream:
    """One measurement of one dependency: every upstream event below global position
    ``frontier`` is handled; ``pause`` says why to wait regardless (None: no reason to)."""

    group: str
    frontier: int
    pause: str | None = None


async def measure(conn: Connection, dependency: Dependency) -> Upstream:
    """Where ``dependency``'s group stands now, from the database alone."""
    group = dependency.group
    head = await message_store.store_head(conn)
    rows = await checkpoints.rows(conn, group)
    if not rows:
        return Upstream(group, FIRST_POSITION, f"upstream {group} has not started")
    partitions = _partitions(rows)
    frontier = head + 1
    for partition in partitions:
        first = await message_store.first_unhandled(conn, partition)
        if first is not None:
            frontier = min(frontier, first)
    return Upstream(group, frontier, await _pause_reason(conn, dependency, partitions))


def _partitions(rows: list[CheckpointRow]) -> list[Partition]:
    """Every member of every category the group checkpoints; a member with no row there yet
    (it has not started) has handled none of it."""
    size = max(row.size for row in rows)
    positions = {(row.category, row.member): row.position for row in rows}
    return [
        Partition(
            category, Share.member(member, size), positions.get((category, member), FIRST_POSITION)
        )
        for category in sorted({row.category for row in rows})
        for member in range(size)
    ]


async def _pause_reason(
    conn: Connection, dependency: Dependency, partitions: list[Partition]
) -> str | None:
    group, size = dependency.group, partitions[0].share.size
    held = await buckets.held(conn, group)  # an elastic upstream's buckets run under leases
    down = [
        member_name(group, member, size)
        for member in range(size)
        if member not in held and not await member_locks.is_held(conn, group, member)
    ]
    if down:
        return f"upstream {', '.join(down)} not running"
    if dependency.max_lag is not None and await _backlog_over(conn, partitions, dependency.max_lag):
        return f"upstream {group} is more than {dependency.max_lag} events behind (max_lag)"
    return None


async def _backlog_over(conn: Connection, partitions: list[Partition], max_lag: int) -> bool:
    """Whether the partitions have more than ``max_lag`` unhandled events between them."""
    budget = max_lag + 1
    for partition in partitions:
        budget -= await message_store.backlog(conn, partition, limit=budget)
        if budget <= 0:
            return True
    return False


class UpstreamMeter:
    """Measures a projection's dependencies through a pool (the gate's database seam)."""

    def __init__(self, pool: Pool, dependencies: Sequence[Dependency]) -> None:
        self._pool = pool
        self._dependencies = tuple(dependencies)

    async def measure(self) -> list[Upstream]:
        async with database.pooled(self._pool, doing="measuring dependencies") as conn:
            return [await measure(conn, dependency) for dependency in self._dependencies]


class DependencyGate:
    """Admits a source's events once every upstream has handled what comes before them.

    `run` measures the upstreams every ``poll`` seconds (``measure`` is the database seam);
    `admit` hands back the prefix of a batch below the frontier, waiting while none of it is,
    or while an upstream gives a reason to pause. Pauses and resumes are logged
    (``dependency_paused`` / ``dependency_resumed``) and reported to each of ``on_pause`` /
    ``on_resume`` (None entries are skipped), once per transition.
    """

    def __init__(
        self,
        measure: Callable[[], Awaitable[list[Upstream]]],
        *,
        group: str,
        on_pause: Sequence[PauseCallback | None] = (),
        on_resume: Sequence[PauseCallback | None] = (),
        poll: float = DEPENDENCY_POLL,
        outage_limit: float = 0.0,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self._measure = measure
        self.group = group
        self._on_pause = [callback for callback in on_pause if callback is not None]
        self._on_resume = [callback for callback in on_resume if callback is not None]
        self._poll = poll
        self._outage_limit = outage_limit
        self._on_retry = on_retry
        # Nothing is admitted before the first measurement.
        self.frontier = FIRST_POSITION
        self.pause_reason: str | None = None
        self._changed = anyio.Event()

    @property
    def paused(self) -> bool:
        return self.pause_reason is not None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Measure every ``poll`` seconds, the first time before reporting started; cancel to
        stop. Retries while the database is away, for up to ``outage_limit`` seconds."""
        await self.refresh()
        task_status.started()
        while True:
            await anyio.sleep(self._poll)
            await self.refresh()

    async def refresh(self) -> None:
        """Measure the upstreams now and apply the result."""
        readings = await outlasting(
            self._measure,
            doing="measuring dependencies",
            limit=self._outage_limit,
            on_retry=self._on_retry,
        )
        self.update(readings)

    def update(self, readings: Sequence[Upstream]) -> None:
        """Take a measurement of every upstream; wake the waiting sources if it lets more in."""
        frontier = min(reading.frontier for reading in readings)
        reasons = [reading.pause for reading in readings if reading.pause is not None]
        was_paused, moved = self.paused, frontier != self.frontier
        self.frontier = frontier
        self._set_pause("; ".join(reasons) or None)
        if moved or (was_paused and not self.paused):
            self._changed.set()
            self._changed = anyio.Event()

    async def admit(self, events: Sequence[Event]) -> Sequence[Event]:
        """The longest prefix of ``events`` (in global order) that may be handled now; waits
        until it is not empty."""
        while events:
            admitted = self.admissible(events)
            if admitted:
                return admitted
            await self._changed.wait()
        return events

    def admissible(self, events: Sequence[Event]) -> Sequence[Event]:
        """The prefix of ``events`` below the frontier; none while paused."""
        if self.paused:
            return events[:0]
        end = bisect.bisect_left(events, self.frontier, key=lambda event: event.global_position)
        return events[:end]

    def _set_pause(self, reason: str | None) -> None:
        was, self.pause_reason = self.pause_reason, reason
        if was is None and reason is not None:
            logger.warning(
                "%s paused: %s",
                self.group,
                reason,
                extra={"action": "dependency_paused", "group": self.group, "reason": reason},
            )
            self._call(self._on_pause, reason)
        elif was is not None and reason is None:
            logger.info(
                "%s resumed (was: %s)",
                self.group,
                was,
                extra={"action": "dependency_resumed", "group": self.group, "reason": was},
            )
            self._call(self._on_resume, was)

    def _call(self, callbacks: list[PauseCallback], reason: str) -> None:
        for callback in callbacks:
            try:
                callback(reason)
            except Exception:
                # A broken notification must not stop the projection; it is reported, not lost.
                logger.exception(
                    "%s's pause/resume callback %s failed",
                    self.group,
                    getattr(callback, "__qualname__", repr(callback)),
                    extra={"action": "dependency_callback_failed", "group": self.group},
                )
