"""``projector status``: per group member and category, how far behind it is (database only).

Everything comes from the database: the checkpoints table, the message store and ``pg_locks``.
So it works with no projector running, and it shows what every member's runner would see.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

from projector.model.events import member_name, validate_group
from projector.model.share import Share
from projector.storage import buckets, checkpoints, held, member_locks, message_store
from projector.storage.checkpoints import CheckpointRow, check_schema
from projector.storage.database import Connection
from projector.storage.held import HeldState, HeldStream
from projector.storage.message_store import Partition


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member's progress in one category. ``checkpoint`` is the next global position to
    read; ``head`` the member's newest event in the category (None: it has none); ``lag_events``
    its events from the checkpoint on; ``lag_seconds`` the age of the oldest of them. Failing
    streams are held out of the read path (their events are not handled, and not counted in
    the lag): ``retrying`` of them wait for their next attempt, the first at
    ``next_attempt_at``; ``parked`` used up their attempts, the first at ``oldest_parked_at``."""

    group: str
    member: int
    size: int
    category: str
    checkpoint: int
    head: int | None
    lag_events: int
    lag_seconds: float | None
    last_written: datetime
    running: bool
    retrying: int = 0
    next_attempt_at: datetime | None = None
    parked: int = 0
    oldest_parked_at: datetime | None = None

    @property
    def name(self) -> str:
        """The checkpoints' owner: ``<group>`` or ``<group>-<member>``."""
        return member_name(self.group, self.member, self.size)


async def collect(conn: Connection, group: str | None = None) -> list[MemberStatus]:
    """The status of every checkpoint (of ``group`` only, if given), in one transaction."""
    if group is not None:
        validate_group(group)
    async with conn.transaction():
        await check_schema(conn)
        rows = await checkpoints.rows(conn, group)
        running: dict[tuple[str, int], bool] = {}
        held_streams = await held.list_held(conn, group)
        return [_with_held(await _member_status(conn, row, running), held_streams) for row in rows]


async def _member_status(
    conn: Connection, row: CheckpointRow, running: dict[tuple[str, int], bool]
) -> MemberStatus:
    partition = Partition(row.category, row.share, row.position)
    lag = await message_store.lag(conn, partition)
    # A member has one lock for all its categories: look it up once.
    key = (row.group, row.member)
    if key not in running:
        held = await buckets.held(conn, row.group)  # an elastic group's buckets
        running[key] = row.member in held or await member_locks.is_held(conn, row.group, row.member)
    return MemberStatus(
        row.group,
        row.member,
        row.size,
        row.category,
        row.position,
        lag.head,
        lag.events,
        lag.seconds,
        row.updated_at,
        running[key],
    )


def _with_held(member: MemberStatus, held_streams: list[HeldStream]) -> MemberStatus:
    """The member's status with its share of the group's held streams in its category."""
    mine = [
        found
        for found in held_streams
        if found.group == member.group
        and found.category == member.category
        and Share.member(member.member, member.size).owns(found.stream_name)
    ]
    if not mine:
        return member
    retrying = [f.next_attempt_at for f in mine if f.next_attempt_at is not None]
    parked = [f.held_at for f in mine if f.state is HeldState.PARKED]
    return dataclasses.replace(
        member,
        retrying=len(retrying),
        next_attempt_at=min(retrying, default=None),
        parked=len(parked),
        oldest_parked_at=min(parked, default=None),
    )


def to_json(rows: list[MemberStatus]) -> str:
    """JSON Lines, one object per member and category, named as `checkpoints list --json`
    names them (see the docs, Commands: JSON output): ints, seconds as floats, ISO 8601 times."""
    return "".join(json.dumps(_json_row(row)) + "\n" for row in rows)


def checkpoint_json(row: CheckpointRow | MemberStatus) -> dict[str, object]:
    """What `status --json` and `checkpoints list --json` both say of a member's checkpoint
    in a category, named alike."""
    checkpoint = row.position if isinstance(row, CheckpointRow) else row.checkpoint
    updated = row.updated_at if isinstance(row, CheckpointRow) else row.last_written
    return {
        "name": row.name,
        "group": row.group,
        "member": row.member,
        "size": row.size,
        "category": row.category,
        "checkpoint": checkpoint,
        "updated_at": updated.isoformat(),
    }


def _json_row(row: MemberStatus) -> dict[str, object]:
    return {
        **checkpoint_json(row),
        "head": row.head,
        "lag_events": row.lag_events,
        "lag_seconds": row.lag_seconds,
        "running": row.running,
        "retrying": row.retrying,
        "next_attempt_at": _iso(row.next_attempt_at),
        "parked": row.parked,
        "oldest_parked_at": _iso(row.oldest_parked_at),
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
