"""A group's checkpoints as a whole: listing, setting, resetting, rebalancing.

Every change here takes the locks of the members it touches (see `projector.storage.member_locks`)
for its transaction: it refuses while a runner holds one, and no runner can start until it
commits. The statements are `projector.storage.checkpoints`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from projector.errors import (
    ConfigurationError,
    MemberBusyError,
    PastTheHeadError,
)
from projector.model.buckets import MAX_BUCKETS, converted_positions
from projector.model.events import (
    FIRST_POSITION,
    MAX_GROUP_SIZE,
    MAX_POSITION,
    validate_category,
    validate_group,
)
from projector.storage import buckets, checkpoints, message_store
from projector.storage.buckets import Lease, Member
from projector.storage.checkpoints import CheckpointRow
from projector.storage.database import Connection
from projector.storage.member_locks import busy_members


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    """What a rebalance does: every category restarts, for each new member, at ``positions``."""

    group: str
    old_size: int
    new_size: int
    positions: dict[str, int]
    notes: list[str]


async def list_checkpoints(conn: Connection, group: str | None = None) -> list[CheckpointRow]:
    if group is not None:
        validate_group(group)
    return await checkpoints.rows(conn, group)


async def set_checkpoint(
    conn: Connection,
    group: str,
    category: str,
    position: int,
    *,
    member: int = 0,
    force: bool = False,
    create: bool = False,
) -> CheckpointRow:
    """Set one member's position in one category (the member must not be running). A position
    past the category's head + 1 skips events not written yet: refused unless ``force``. A
    group with no checkpoint at all is often a typo'd name: refused unless ``create``."""
    validate_group(group)
    validate_category(category)
    if not 0 <= position <= MAX_POSITION:
        raise ConfigurationError(f"position {position} is out of range: give 0 to {MAX_POSITION}")
    if not 0 <= member < MAX_GROUP_SIZE:
        raise ConfigurationError(f"member {member}: give 0 to {MAX_GROUP_SIZE - 1}")
    async with conn.transaction():
        if not force:
            await _refuse_past_the_head(conn, category, position)
        rows, _ = await _lock_group(conn, group, range(member, member + 1))
        if not rows and not create:
            raise ConfigurationError(
                f"group {group!r} has no checkpoints: check the name (`projector checkpoints "
                "list` shows every group), or give --create to start a new group there"
            )
        size = max((row.size for row in rows), default=1)
        if member >= size:
            raise ConfigurationError(
                f"group {group!r} has {size} member(s), numbered 0 to {size - 1}; "
                f"there is no member {member}"
            )
        await checkpoints.write(conn, group, member, size, category, position)
    return (await _rows_of(conn, group, member, category))[0]


async def head_position(conn: Connection, category: str) -> int:
    """The position after the category's last event: a checkpoint there skips all of it."""
    head = await message_store.category_head(conn, category)
    return FIRST_POSITION if head is None else head + 1


async def position_at(conn: Connection, category: str, time: datetime) -> int:
    """The position of the category's first event written at or after ``time`` (the head
    position when none was): a checkpoint there replays everything written since."""
    utc = time.astimezone(UTC).replace(tzinfo=None) if time.tzinfo else time
    first = await message_store.first_since(conn, category, utc)
    return await head_position(conn, category) if first is None else first


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
        await checkpoints.delete(conn, group, category=category)
        if category is not None:
            rows = [row for row in rows if row.category == category]
    return rows


async def rebalance(conn: Connection, group: str, size: int, *, dry_run: bool) -> RebalancePlan:
    """Restart a group at ``size`` members, each category from the lowest old checkpoint."""
    validate_group(group)
    if not 1 <= size <= MAX_GROUP_SIZE:
        raise ConfigurationError(
            f"--group-size {size} is out of range: a group has 1 to {MAX_GROUP_SIZE:,} members"
        )
    async with conn.transaction() as transaction:
        stored = await buckets.stored_buckets(conn, group)
        if stored is not None:
            raise ConfigurationError(
                f"group {group!r} is elastic ({stored} buckets): members join and leave "
                "without a rebalance; start or stop `projector run --elastic` processes instead"
            )
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
            await checkpoints.delete(conn, group)
            for category, position in plan.positions.items():
                for member in range(size):
                    await checkpoints.write(conn, group, member, size, category, position)
    return plan


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


@dataclass(frozen=True, slots=True)
class Conversion:
    """What converting a fixed group to an elastic one does: per category, each bucket's
    starting position (the lowest checkpoint of the old members that owned its streams)."""

    group: str
    old_size: int
    buckets: int
    positions: dict[str, dict[int, int]]
    notes: list[str]


async def convert_to_elastic(
    conn: Connection, group: str, bucket_count: int, *, dry_run: bool
) -> Conversion:
    """Turn the ``<group>-<member>`` checkpoints of a stopped fixed group into the checkpoints
    of ``bucket_count`` buckets, in one transaction: events are delivered again at most once,
    and none is skipped."""
    validate_group(group)
    if not 1 <= bucket_count <= MAX_BUCKETS:
        raise ConfigurationError(
            f"--buckets {bucket_count}: an elastic group has 1 to {MAX_BUCKETS:,} buckets"
        )
    async with conn.transaction() as transaction:
        if await buckets.stored_buckets(conn, group) is not None:
            raise ConfigurationError(
                f"group {group!r} is elastic already: start its members with --elastic"
            )
        # A dry run changes nothing, so it may look while members run (and says so).
        rows, busy = await _lock_group(conn, group, refuse_busy=not dry_run)
        if not rows:
            raise ConfigurationError(
                f"group {group!r} has no checkpoints, so there is nothing to convert: start its "
                f"members with --elastic --buckets {bucket_count}"
            )
        old_size = max(row.size for row in rows)
        positions = {
            category: converted_positions(
                {row.member: row.position for row in rows if row.category == category},
                old_size,
                bucket_count,
            )
            for category in sorted({row.category for row in rows})
        }
        if dry_run:
            transaction.force_rollback = True
        else:
            await checkpoints.delete(conn, group)
            for category, by_bucket in positions.items():
                for bucket, position in by_bucket.items():
                    await checkpoints.write(conn, group, bucket, bucket_count, category, position)
            await buckets.register(conn, group, bucket_count)
    notes = [f"running now: {'; '.join(busy)}; stop every member first"] if busy else []
    return Conversion(group, old_size, bucket_count, positions, notes)


@dataclass(frozen=True, slots=True)
class ElasticGroup:
    """An elastic group as `projector group show` prints it."""

    group: str
    buckets: int
    members: list[Member]
    leases: list[Lease]

    def owned_by(self, member_id: str) -> list[int]:
        return [lease.bucket for lease in self.leases if lease.owner == member_id]

    @property
    def unowned(self) -> list[int]:
        return [lease.bucket for lease in self.leases if lease.free]


async def show_elastic(conn: Connection, group: str) -> ElasticGroup:
    """An elastic group's members (their buckets, their last heartbeat) and leases."""
    validate_group(group)
    count = await buckets.stored_buckets(conn, group)
    if count is None:
        sizes = await checkpoints.group_sizes(conn, group)
        if sizes:
            raise ConfigurationError(
                f"group {group!r} is a fixed group of {max(sizes)} member(s), not an elastic "
                f"one: `projector status --group {group}` shows it"
            )
        raise ConfigurationError(
            f"there is no group {group!r} (no checkpoints, no elastic members): check the name "
            "(`projector status` lists every group)"
        )
    return ElasticGroup(
        group, count, await buckets.members(conn, group), await buckets.leases(conn, group)
    )


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
    rows = await checkpoints.lock_rows(conn, group)
    if members is None:
        known = max((max(row.size, row.member + 1) for row in rows), default=1)
        members = range(max(known, extra_members))
    busy = await busy_members(conn, group, members)
    # An elastic group's members hold bucket leases, not member locks.
    owners = sorted(set((await buckets.lock_held(conn, group)).values()))
    busy += [f"elastic member {owner}" for owner in owners]
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
