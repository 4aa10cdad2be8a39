"""Failing streams as operators see them (``projector failing``): which member owns each one,
and asking for a replay, saying whether a runner is up to act on it.

Everything comes from the database, so it works with no runner up: a held stream's row, the
group's checkpoints (which member or bucket a stream belongs to) and ``pg_locks`` / the bucket
locks (whether that member runs).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from projector.storage import buckets, checkpoints, held, member_locks
from projector.storage.checkpoints import CheckpointRow
from projector.storage.database import Connection
from projector.storage.held import HeldStream


@dataclass(frozen=True, slots=True)
class OwnedHeldStream:
    """A held stream with the member (the bucket, in an elastic group) that owns it: None
    while its group has no checkpoint for the stream's category."""

    held: HeldStream
    member: int | None
    name: str | None


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """The streams whose replay was asked for, and whether a runner of the group runs now
    (else the group's next `projector run` replays them as it starts)."""

    streams: list[str]
    runner_up: bool


async def list_owned(conn: Connection, group: str | None = None) -> list[OwnedHeldStream]:
    """Every held stream (of ``group`` only, if given), with its owner."""
    rows = await held.list_held(conn, group)
    owners = await checkpoints.rows(conn, group)
    return [_owned(row, owners) for row in rows]


def _owned(row: HeldStream, owners: list[CheckpointRow]) -> OwnedHeldStream:
    for owner in owners:
        if (
            owner.group == row.group
            and owner.category == row.category
            and owner.share.owns(row.stream_name)
        ):
            return OwnedHeldStream(row, owner.member, owner.name)
    return OwnedHeldStream(row, None, None)


async def request_retry(conn: Connection, group: str, stream_name: str | None) -> RetryRequest:
    """Ask for a replay of a held stream now (every one of the group with None)."""
    streams = await held.request_retry(conn, group, stream_name)
    return RetryRequest(streams, await runner_up(conn, group))


async def skip_event(
    conn: Connection, group: str, stream_name: str, event_id: uuid.UUID
) -> tuple[HeldStream, bool]:
    """Skip a held stream's failing event; the row as it is now, and whether a runner is up."""
    row = await held.skip_event(conn, group, stream_name, event_id)
    return row, await runner_up(conn, group)


async def runner_up(conn: Connection, group: str) -> bool:
    """Whether any runner of the group runs now: a member's lock, or a live bucket lease."""
    if await buckets.held(conn, group):
        return True
    members = {row.member for row in await checkpoints.rows(conn, group)}
    for member in sorted(members):
        if await member_locks.is_held(conn, group, member):
            return True
    return False
