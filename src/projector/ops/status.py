"""``projector status``: per group member and category, how far behind it is (database only).

Everything comes from the database: the checkpoints table, the message store and ``pg_locks``.
So it works with no projector running, and it shows what every member's runner would see.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime

from projector.model.events import member_name, owns, validate_group
from projector.storage import buckets, checkpoints, database, leases, message_store, parked
from projector.storage.checkpoints import CheckpointRow, check_schema
from projector.storage.database import Connection
from projector.storage.message_store import Partition
from projector.storage.parked import ParkedStream


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member's progress in one category. ``checkpoint`` is the next global position to
    read; ``head`` the member's newest event in the category (None: it has none); ``lag_events``
    its events from the checkpoint on; ``lag_seconds`` the age of the oldest of them; ``parked``
    how many of its streams in the category are parked (their events are not handled, and not
    counted in the lag), ``oldest_parked_at`` when the first of them was."""

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
    with database.unavailable_as("reading the status"):
        async with conn.transaction():
            await check_schema(conn)
            rows = await checkpoints.rows(conn, group)
            running: dict[tuple[str, int], bool] = {}
            parked_streams = await parked.list_parked(conn, group)
            return [
                _with_parked(await _member_status(conn, row, running), parked_streams)
                for row in rows
            ]


async def _member_status(
    conn: Connection, row: CheckpointRow, running: dict[tuple[str, int], bool]
) -> MemberStatus:
    partition = Partition(row.category, row.member, row.size, row.position)
    lag = await message_store.lag(conn, partition)
    # A member has one lock for all its categories: look it up once.
    key = (row.group, row.member)
    if key not in running:
        held = await buckets.held(conn, row.group)  # an elastic group's buckets
        running[key] = row.member in held or await leases.is_held(conn, row.group, row.member)
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


def _with_parked(member: MemberStatus, parked_streams: list[ParkedStream]) -> MemberStatus:
    """The member's status with its share of the group's parked streams in its category."""
    times = [
        found.parked_at
        for found in parked_streams
        if found.group == member.group
        and found.category == member.category
        and owns(member.member, member.size, found.stream_name)
    ]
    if not times:
        return member
    return dataclasses.replace(member, parked=len(times), oldest_parked_at=min(times))


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
        "parked": row.parked,
        "oldest_parked_at": None
        if row.oldest_parked_at is None
        else row.oldest_parked_at.isoformat(),
    }
