"""How far behind a running member is, per category, measured from its in-memory position.

`projector status` measures from the committed checkpoint; a running member knows better: the
position up to which its handlers are done (`CheckpointWriter.completed`), ahead of the last
commit by up to ``checkpoint_interval``. The statement is the one `status` runs (one per
category), through the runner's pool. A failed measurement is not an error of the run: the
previous reading stays, and the failure is handed to ``on_failed`` (health reports it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from projector.errors import DatabaseUnavailableError
from projector.model.share import Share
from projector.storage import database, message_store
from projector.storage.database import Pool
from projector.storage.message_store import Partition

logger = logging.getLogger(__name__)

LAG_INTERVAL = 5.0  # seconds between measurements while metrics are served


@dataclass(frozen=True, slots=True)
class CategoryLag:
    """One category: ``position`` is the next global position the member reads (everything
    below it is handled); ``head`` the member's newest event (None: it has none); ``events`` its
    events not handled yet; ``seconds`` the age of the oldest of them (0 when none); ``behind``
    its events from ``position`` on, handled or not: more than ``events`` while a stream that
    retries holds the position back, and the others' events are handled ahead of it."""

    category: str
    position: int
    head: int | None
    events: int
    seconds: float
    behind: int = 0


@dataclass(frozen=True, slots=True)
class LagReading:
    """Every category's lag, measured at ``at`` (`anyio.current_time`) / ``wall`` (Unix time)."""

    categories: Mapping[str, CategoryLag]
    at: float
    wall: float

    def within(self, max_events: int) -> bool:
        return all(lag.events <= max_events for lag in self.categories.values())


class LagTracker:
    """Measures a member's lag in each category from ``positions()`` (category -> next global
    position to read), reporting each reading to ``on_measured`` and each failure to
    ``on_failed``."""

    def __init__(
        self,
        pool: Pool,
        positions: Callable[[], dict[str, int]],
        *,
        share: Share,
        on_measured: Callable[[LagReading], None],
        on_failed: Callable[[DatabaseUnavailableError], None],
        handled_ahead: Callable[[], Mapping[str, int]] = dict,
    ) -> None:
        self._pool = pool
        self._positions = positions
        self._handled_ahead = handled_ahead
        self._share = share
        self._on_measured = on_measured
        self._on_failed = on_failed

    async def run(
        self, *, interval: float, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Measure every ``interval`` seconds, the first time before reporting started; cancel
        to stop."""
        await self.measure()
        task_status.started()
        while True:
            await anyio.sleep(interval)
            await self.measure()

    async def measure(self) -> LagReading | None:
        """Measure now; None when the database did not answer."""
        try:
            reading = await self._query(self._positions())
        except DatabaseUnavailableError as exc:
            logger.debug("lag not measured: %s", exc, extra={"action": "lag_unmeasured"})
            self._on_failed(exc)
            return None
        self._on_measured(reading)
        return reading

    async def _query(self, positions: dict[str, int]) -> LagReading:
        found: dict[str, CategoryLag] = {}
        ahead = self._handled_ahead()
        async with database.pooled(self._pool, doing="measuring the lag") as conn:
            for category, position in positions.items():
                partition = Partition(category, self._share, position)
                lag = await message_store.lag(conn, partition)
                found[category] = CategoryLag(
                    category,
                    position,
                    lag.head,
                    max(lag.events - ahead.get(category, 0), 0),
                    max(float(lag.seconds or 0.0), 0.0),
                    lag.events,
                )
        return LagReading(found, anyio.current_time(), time.time())
