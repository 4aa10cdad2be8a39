"""``projector.checkpoints``: per group member and category, the next global position to read.

Every event below a committed checkpoint has been handled. A running member's loads and commits
(`Checkpoints`) go through the connection that holds the member's lock (see `member_locks`): a
runner that lost its lock cannot commit. The statements after it are the group's as a whole,
for administration (`projector.admin.groups`), status and dependencies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from projector.errors import SchemaMissingError
from projector.model.events import hash_64, member_name
from projector.model.share import Share
from projector.storage.database import Connection

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
   AND to_regclass('projector.held_streams') IS NOT NULL
   AND to_regclass('projector.stream_positions') IS NOT NULL
   AND to_regclass('projector.bucket_leases') IS NOT NULL
   AND to_regclass('projector.projection_versions') IS NOT NULL
"""

# Held while a starting member checks the group's size and writes its first checkpoints, so
# that two members of different sizes cannot both pass the check on a new group.
LOCK_GROUP_START = "SELECT pg_advisory_xact_lock(%(key)s)"

GROUP_SIZES = """
SELECT DISTINCT group_size FROM projector.checkpoints WHERE group_name = %(group)s
"""

LIST = """
SELECT group_name, member, group_size, category, position, updated_at
FROM projector.checkpoints
WHERE %(group)s::text IS NULL OR group_name = %(group)s
ORDER BY group_name, category, member
"""

LOCK_GROUP_ROWS = """
SELECT group_name, member, group_size, category, position, updated_at
FROM projector.checkpoints WHERE group_name = %(group)s
ORDER BY category, member
FOR UPDATE
"""

DELETE_GROUP = "DELETE FROM projector.checkpoints WHERE group_name = %(group)s"
DELETE_CATEGORY = """
DELETE FROM projector.checkpoints WHERE group_name = %(group)s AND category = %(category)s
"""


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    group: str
    member: int
    size: int
    category: str
    position: int
    updated_at: datetime

    @property
    def name(self) -> str:
        """The checkpoints' owner: ``<group>`` or ``<group>-<member>``."""
        return member_name(self.group, self.member, self.size)

    @property
    def share(self) -> Share:
        """The streams the row checkpoints (an elastic group's rows are per bucket)."""
        return Share.member(self.member, self.size)


async def check_schema(conn: Connection) -> None:
    """Raise SchemaMissingError unless projector's tables exist."""
    row = await (await conn.execute(TABLES_PRESENT)).fetchone()
    if row is None or not row[0]:
        raise SchemaMissingError(
            "projector's tables are missing or out of date (projector.checkpoints, "
            "projector.held_streams, projector.stream_positions, projector.bucket_leases, "
            "projector.projection_versions): "
            "run `projector migrate`"
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
        row = await (await self._connection().execute(LOAD, params)).fetchone()
        return None if row is None else int(row[0])

    async def commit(self, positions: dict[str, int]) -> None:
        """Write several categories' positions in one transaction."""
        conn = self._connection()
        async with conn.transaction():
            for category, position in positions.items():
                await write(conn, self.group, self.member, self.size, category, position)


async def write(
    conn: Connection, group: str, member: int, size: int, category: str, position: int
) -> None:
    """Set one member's checkpoint in one category (in the caller's transaction, if any)."""
    params = {
        "group": group,
        "member": member,
        "size": size,
        "category": category,
        "position": position,
    }
    await conn.execute(COMMIT, params)


async def lock_group_start(conn: Connection, group: str) -> None:
    """Serialise, until the transaction ends, the members of ``group`` starting at once."""
    await conn.execute(LOCK_GROUP_START, {"key": hash_64(f"projector-start/{group}")})


async def group_sizes(conn: Connection, group: str) -> list[int]:
    """The sizes the group's checkpoints were written with (one, unless mid-mistake)."""
    rows = await (await conn.execute(GROUP_SIZES, {"group": group})).fetchall()
    return sorted(int(row[0]) for row in rows)


async def rows(conn: Connection, group: str | None = None) -> list[CheckpointRow]:
    """Every checkpoint (of ``group`` only, if given), by group, category and member."""
    found = await (await conn.execute(LIST, {"group": group})).fetchall()
    return [CheckpointRow(*row) for row in found]


async def lock_rows(conn: Connection, group: str) -> list[CheckpointRow]:
    """The group's checkpoints, locked until the transaction ends."""
    found = await (await conn.execute(LOCK_GROUP_ROWS, {"group": group})).fetchall()
    return [CheckpointRow(*row) for row in found]


async def delete(conn: Connection, group: str, *, category: str | None = None) -> None:
    """Delete the group's checkpoints, or only those of ``category``."""
    if category is None:
        await conn.execute(DELETE_GROUP, {"group": group})
    else:
        await conn.execute(DELETE_CATEGORY, {"group": group, "category": category})
