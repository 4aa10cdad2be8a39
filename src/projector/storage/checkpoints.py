"""Checkpoints: per group member and category, the next global position to read.

Every event below a committed checkpoint has been handled. The writer only ever learns of a
position from the sink's in-order batch completions, so it can never pass an unfinished batch.
Loads and commits go through the connection that holds the member's lock (see `lease`): a
runner that lost its lock cannot commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import psycopg

from projector.errors import DatabaseUnavailableError, SchemaMissingError
from projector.storage import database
from projector.storage.database import Connection
from projector.storage.leases import member_name

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

TABLES_PRESENT = """
SELECT to_regclass('projector.checkpoints') IS NOT NULL
   AND to_regclass('projector.parked_streams') IS NOT NULL
   AND to_regclass('projector.stream_positions') IS NOT NULL
"""

DEFAULT_FLUSH_TIMEOUT = 10.0  # seconds the last commit of a stopping runner may take


async def check_schema(conn: Connection) -> None:
    """Raise SchemaMissingError unless projector's tables exist."""
    row = await (await conn.execute(TABLES_PRESENT)).fetchone()
    if row is None or not row[0]:
        raise SchemaMissingError(
            "projector's tables are missing or out of date (projector.checkpoints, "
            "projector.parked_streams, projector.stream_positions): run `projector migrate`"
        )


class Checkpoints:
    """Loads and commits the checkpoints of one member of a group (a plain group: 0 of 1)."""

    def __init__(
        self, connection: Callable[[], Connection], group: str, *, member: int = 0, size: int = 1
    ) -> None:
        self._connection = connection  # the lease's current connection
        self.group = group
        self.member = member
        self.size = size
        self.name = member_name(group, member, size)

    async def load(self, category: str) -> int | None:
        params = {"group": self.group, "member": self.member, "category": category}
        try:
            row = await (await self._connection().execute(LOAD, params)).fetchone()
        except psycopg.OperationalError as exc:
            raise database.unavailable_during("loading checkpoints", exc) from exc
        return None if row is None else int(row[0])

    async def commit(self, positions: dict[str, int]) -> None:
        """Write several categories' positions in one transaction."""
        try:
            conn = self._connection()
            async with conn.transaction():
                for category, position in positions.items():
                    params = {
                        "group": self.group,
                        "member": self.member,
                        "size": self.size,
                        "category": category,
                        "position": position,
                    }
                    await conn.execute(COMMIT, params)
        except psycopg.OperationalError as exc:
            raise database.unavailable_during("committing a checkpoint", exc) from exc


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
    def name(self) -> str:
        """The checkpoints' owner: ``<group>`` or ``<group>-<member>``."""
        return self._checkpoints.name

    @property
    def committed(self) -> dict[str, int]:
        """The positions last committed (or loaded at start), per category."""
        return dict(self._committed)

    @property
    def completed(self) -> dict[str, int]:
        return dict(self._completed)

    async def run(self) -> None:
        """Commit on the interval, forever; cancel to stop (then call ``flush``).

        A commit that fails because the database is away is logged and tried again at the next
        tick: the positions stay in memory, and the sources decide when an outage is too long.
        """
        while True:
            await anyio.sleep(self._interval)
            try:
                # Shielded: cancelling a commit in flight makes psycopg close the connection,
                # and the stopping runner's last commit needs that connection.
                with anyio.move_on_after(DEFAULT_FLUSH_TIMEOUT, shield=True):
                    await self.flush()
            except DatabaseUnavailableError as exc:
                logger.warning(
                    "checkpoint commit failed, retrying in %g s: %s",
                    self._interval,
                    exc,
                    extra={"action": "checkpoint_commit_failed", "group": self.name},
                )

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
