"""A group's checkpoints as a whole: the size check, listing, setting, resetting, rebalancing.

Every change here takes the locks of the members it touches (see `lease`) for its transaction:
it refuses while a runner holds one, and no runner can start until it commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from projector.errors import ConfigurationError
from projector.model.events import hash_64, validate_category, validate_group
from projector.storage.checkpoints import COMMIT
from projector.storage.database import Connection
from projector.storage.leases import MemberBusyError, busy_members, member_name
from projector.storage.message_store import CATEGORY_HEAD

FIRST_POSITION = 1  # Message DB's global positions start at 1

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

# The first event of a category written at or after a time (Message DB's ``time`` is UTC
# without a zone); global positions follow write order, so it is where a replay from then
# starts.
FIRST_SINCE = """
SELECT min(global_position) FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s AND time >= %(time)s
"""


class GroupSizeMismatchError(ConfigurationError):
    """A member was started with a group size other than its group's checkpoints were written
    with."""


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
        return member_name(self.group, self.member, self.size)


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """What a rebalance does: every category restarts, for each new member, at ``positions``."""

    group: str
    old_size: int
    new_size: int
    positions: dict[str, int]
    notes: list[str]


def group_start_key(group: str) -> int:
    return hash_64(f"projector-start/{group}")


async def check_size(conn: Connection, group: str, size: int) -> None:
    """Raise GroupSizeMismatchError unless the group's checkpoints were written at ``size``."""
    rows = await (await conn.execute(GROUP_SIZES, {"group": group})).fetchall()
    sizes = sorted(int(row[0]) for row in rows)
    if sizes and sizes != [size]:
        stored = " and ".join(map(str, sizes))
        raise GroupSizeMismatchError(
            f"group {group!r} has checkpoints for a group of size {stored}, but this runner "
            f"was started with size {size}: stop every member, run "
            f"`projector rebalance --group {group} --group-size {size}`, then start them again"
        )


async def list_checkpoints(conn: Connection, group: str | None = None) -> list[CheckpointRow]:
    if group is not None:
        validate_group(group)
    rows = await (await conn.execute(LIST, {"group": group})).fetchall()
    return [CheckpointRow(*row) for row in rows]


class PastTheHeadError(ConfigurationError):
    """A checkpoint was asked for past the category's head: every event written until the store
    reaches it would be skipped."""


async def set_checkpoint(
    conn: Connection,
    group: str,
    category: str,
    position: int,
    *,
    member: int = 0,
    force: bool = False,
) -> CheckpointRow:
    """Set one member's position in one category (the member must not be running). A position
    past the category's head + 1 skips events not written yet: refused unless ``force``."""
    validate_group(group)
    validate_category(category)
    if position < 0:
        raise ConfigurationError(f"position {position} is negative: give 0 or more")
    async with conn.transaction():
        if not force:
            await _refuse_past_the_head(conn, category, position)
        rows, _ = await _lock_group(conn, group, range(member, member + 1))
        size = max((row.size for row in rows), default=1)
        if member >= size:
            raise ConfigurationError(
                f"group {group!r} has {size} member(s), numbered 0 to {size - 1}; "
                f"there is no member {member}"
            )
        await _write(conn, group, member, size, category, position)
    return (await _rows_of(conn, group, member, category))[0]


async def head_position(conn: Connection, category: str) -> int:
    """The position after the category's last event: a checkpoint there skips all of it."""
    row = await (await conn.execute(CATEGORY_HEAD, {"category": category})).fetchone()
    return FIRST_POSITION if row is None else int(row[0]) + 1


async def position_at(conn: Connection, category: str, time: datetime) -> int:
    """The position of the category's first event written at or after ``time`` (the head
    position when none was): a checkpoint there replays everything written since."""
    utc = time.astimezone(UTC).replace(tzinfo=None) if time.tzinfo else time
    params = {"category": category, "time": utc}
    row = await (await conn.execute(FIRST_SINCE, params)).fetchone()
    if row is None or row[0] is None:
        return await head_position(conn, category)
    return int(row[0])


async def _refuse_past_the_head(conn: Connection, category: str, position: int) -> None:
    head = await head_position(conn, category)
    if position > head:
        last = "is empty" if head == FIRST_POSITION else f"ends at {head - 1}"
        raise PastTheHeadError(
            f"position {position} is past the head of category {category!r}, which {last}: "
            f"a checkpoint there would skip every event written until the store reaches it. "
            f"Give at most {head} (or --to-head), or --force if that is what you want"
        )


async def reset_group(
    conn: Connection, group: str, *, category: str | None = None
) -> list[CheckpointRow]:
    """Delete every checkpoint of a group, or only those of one ``category`` (no member may be
    running); return what was deleted. Its members start it again from the beginning."""
    validate_group(group)
    if category is not None:
        validate_category(category)
    async with conn.transaction():
        rows, _ = await _lock_group(conn, group)
        if category is None:
            await conn.execute(DELETE_GROUP, {"group": group})
        else:
            await conn.execute(DELETE_CATEGORY, {"group": group, "category": category})
            rows = [row for row in rows if row.category == category]
    return rows


async def rebalance(conn: Connection, group: str, size: int, *, dry_run: bool) -> RebalancePlan:
    """Restart a group at ``size`` members, each category from the lowest old checkpoint."""
    validate_group(group)
    if size < 1:
        raise ConfigurationError(f"--group-size {size} is too small: a group has at least 1 member")
    async with conn.transaction() as transaction:
        # A dry run changes nothing, so it may look while members run (and says so).
        rows, busy = await _lock_group(conn, group, extra_members=size, refuse_busy=not dry_run)
        if not rows:
            raise ConfigurationError(
                f"group {group!r} has no checkpoints, so there is nothing to rebalance: "
                f"start its members with --group-size {size}"
            )
        plan = _plan(group, size, rows)
        if busy:
            plan.notes.append(f"running now: {'; '.join(busy)}; stop every member first")
        if plan.old_size == size:
            # Rebalancing to the same size would only replay from the lowest checkpoint.
            plan.notes.append(f"the group already has {size} member(s): nothing to do")
            transaction.force_rollback = True
        elif dry_run:
            transaction.force_rollback = True
        else:
            await conn.execute(DELETE_GROUP, {"group": group})
            for category, position in plan.positions.items():
                for member in range(size):
                    await _write(conn, group, member, size, category, position)
    return plan


async def _write(
    conn: Connection, group: str, member: int, size: int, category: str, position: int
) -> None:
    params = {
        "group": group,
        "member": member,
        "size": size,
        "category": category,
        "position": position,
    }
    await conn.execute(COMMIT, params)


def _plan(group: str, size: int, rows: list[CheckpointRow]) -> RebalancePlan:
    old_size = max(row.size for row in rows)
    positions: dict[str, int] = {}
    notes: list[str] = []
    for category in sorted({row.category for row in rows}):
        members = {row.member: row.position for row in rows if row.category == category}
        missing = sorted(set(range(old_size)) - set(members))
        if missing:
            # A member that never checkpointed this category has handled none of it.
            notes.append(
                f"{category}: member(s) {', '.join(map(str, missing))} had no checkpoint, "
                "so every member starts it from the beginning"
            )
            positions[category] = FIRST_POSITION
        else:
            positions[category] = min(members.values())
    return RebalancePlan(group, old_size, size, positions, notes)


async def _lock_group(
    conn: Connection,
    group: str,
    members: range | None = None,
    *,
    extra_members: int = 0,
    refuse_busy: bool = True,
) -> tuple[list[CheckpointRow], list[str]]:
    """Lock a group's rows and its members (all of them unless ``members``); refuse if one
    runs (unless not ``refuse_busy``: then return who runs)."""
    rows = [
        CheckpointRow(*row)
        for row in await (await conn.execute(LOCK_GROUP_ROWS, {"group": group})).fetchall()
    ]
    if members is None:
        known = max((max(row.size, row.member + 1) for row in rows), default=1)
        members = range(max(known, extra_members))
    busy = await busy_members(conn, group, members)
    if busy and refuse_busy:
        raise MemberBusyError(
            f"group {group!r} is running: {'; '.join(busy)}. Stop every member first"
        )
    return rows, busy


async def _rows_of(conn: Connection, group: str, member: int, category: str) -> list[CheckpointRow]:
    return [
        row
        for row in await list_checkpoints(conn, group)
        if row.member == member and row.category == category
    ]
