"""Checkpoints: per group and category, the next global position to read.

Every event below a committed checkpoint has been handled. The writer only ever learns of a
position from the sink's in-order batch completions, so it can never pass an unfinished batch.
"""

from __future__ import annotations

import logging

import anyio

from projector.database import Pool
from projector.errors import SchemaMissingError

logger = logging.getLogger(__name__)

LOAD = """
SELECT position FROM projector.checkpoints
WHERE group_name = %(group)s AND member = %(member)s AND category = %(category)s
"""

COMMIT = """
INSERT INTO projector.checkpoints (group_name, member, group_size, category, position, updated_at)
VALUES (%(group)s, %(member)s, %(size)s, %(category)s, %(position)s, now())
ON CONFLICT (group_name, member, category)
DO UPDATE SET position = EXCLUDED.position, group_size = EXCLUDED.group_size,
              updated_at = EXCLUDED.updated_at
"""

TABLE_PRESENT = "SELECT to_regclass('projector.checkpoints') IS NOT NULL"

DEFAULT_FLUSH_TIMEOUT = 10.0  # seconds the last commit of a stopping runner may take



class Checkpoints:
    """Loads and commits the checkpoints of one member of a group (a plain group: 0 of 1)."""

    def __init__(self, pool: Pool, group: str, *, member: int = 0, size: int = 1) -> None:
        self._pool = pool
        self.group = group
        self.member = member
        self.size = size
        self.name = group if size == 1 else f"{group}-{member}"

    async def check_schema(self) -> None:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(TABLE_PRESENT)).fetchone()
        if row is None or not row[0]:
            raise SchemaMissingError(
                "projector's tables are missing (projector.checkpoints): run `projector migrate`"
            )

    async def load(self, category: str) -> int | None:
        async with self._pool.connection() as conn:
            params = {"group": self.group, "member": self.member, "category": category}
            row = await (await conn.execute(LOAD, params)).fetchone()
        return None if row is None else int(row[0])

    async def commit(self, positions: dict[str, int]) -> None:
        """Write several categories' positions in one transaction."""
        async with self._pool.connection() as conn, conn.transaction():
            for category, position in positions.items():
                params = {
                    "group": self.group,
                    "member": self.member,
                    "size": self.size,
                    "category": category,
                    "position": position,
                }
                await conn.execute(COMMIT, params)


class CheckpointWriter:
    """Commits positions as batches complete: every ``interval`` seconds when one moved, and on
    ``flush``."""

    def __init__(self, checkpoints: Checkpoints, *, interval: float) -> None:
        self._checkpoints = checkpoints
        self._interval = interval
        self._completed: dict[str, int] = {}
        self._committed: dict[str, int] = {}

    def start_at(self, category: str, position: int) -> None:
        """The position a category starts from, already committed or about to be."""
        self._completed[category] = position
        self._committed[category] = position

    def advance(self, category: str, position: int) -> None:
        """Record that every event of ``category`` below ``position`` is handled."""
        self._completed[category] = position

    @property
    def completed(self) -> dict[str, int]:
        return dict(self._completed)

    async def run(self) -> None:
        """Commit on the interval, forever; cancel to stop (then call ``flush``)."""
        while True:
            await anyio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Commit every position that moved since the last commit."""
        moved = {c: p for c, p in self._completed.items() if self._committed.get(c) != p}
        if not moved:
            return
        await self._checkpoints.commit(moved)
        self._committed.update(moved)
        for category, position in moved.items():
            logger.info(
                "checkpoint %s/%s committed at %d",
                self._checkpoints.name,
                category,
                position,
                extra={
                    "action": "checkpoint_committed",
                    "group": self._checkpoints.name,
                    "category": category,
                    "position": position,
                },
            )
