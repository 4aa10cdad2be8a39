"""Parked streams: set aside after their handler kept failing, so that every other stream goes on.

A parked stream loses nothing: its row holds the stream position of its first unhandled event,
and a retry (``projector parked retry``) makes the runner that owns the stream replay it from
there, in stream order, reading the stream itself. Until then the stream's events are dropped
as they are read, which is what lets the checkpoint move on.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import LiteralString

from projector.errors import ConfigurationError
from projector.model.events import Event, category, owns, validate_group
from projector.storage.database import Connection, Pool, pooled

PARK = """
INSERT INTO projector.parked_streams AS p (group_name, stream_name, category, position,
    global_position, event_id, event_type, error, traceback, attempts, parked_at)
VALUES (%(group)s, %(stream)s, %(category)s, %(position)s, %(global_position)s, %(event_id)s,
    %(event_type)s, %(error)s, %(traceback)s, %(attempts)s, now())
ON CONFLICT (group_name, stream_name) DO UPDATE
SET position = EXCLUDED.position, global_position = EXCLUDED.global_position,
    event_id = EXCLUDED.event_id, event_type = EXCLUDED.event_type, error = EXCLUDED.error,
    traceback = EXCLUDED.traceback, attempts = p.attempts + EXCLUDED.attempts,
    parked_at = now(), retry_requested_at = NULL
"""

COLUMNS = """group_name, stream_name, category, position, global_position, event_id, event_type,
    error, traceback, attempts, parked_at, retry_requested_at"""

LIST = f"""
SELECT {COLUMNS} FROM projector.parked_streams
WHERE %(group)s::text IS NULL OR group_name = %(group)s
ORDER BY group_name, parked_at
"""

ONE = f"""
SELECT {COLUMNS} FROM projector.parked_streams
WHERE group_name = %(group)s AND stream_name = %(stream)s
"""

RETRY_REQUESTED = f"""
SELECT {COLUMNS} FROM projector.parked_streams
WHERE group_name = %(group)s AND retry_requested_at IS NOT NULL
ORDER BY retry_requested_at
"""

REQUEST_RETRY = """
UPDATE projector.parked_streams SET retry_requested_at = now()
WHERE group_name = %(group)s AND (%(stream)s::text IS NULL OR stream_name = %(stream)s)
RETURNING stream_name
"""

SKIP = f"""
UPDATE projector.parked_streams SET position = position + 1, retry_requested_at = now()
WHERE group_name = %(group)s AND stream_name = %(stream)s AND event_id = %(event_id)s
RETURNING {COLUMNS}
"""

# Only the parking that was replayed: one that failed again meanwhile has a newer parked_at.
UNPARK = """
DELETE FROM projector.parked_streams
WHERE group_name = %(group)s AND stream_name = %(stream)s AND parked_at = %(parked_at)s
"""


@dataclass(frozen=True, slots=True)
class ParkedStream:
    group: str
    stream_name: str
    category: str
    position: int
    global_position: int
    event_id: uuid.UUID
    event_type: str
    error: str
    traceback: str
    attempts: int
    parked_at: datetime
    retry_requested_at: datetime | None


class ParkedStreams:
    """The parked streams one runner owns: those of its group that belong to its member."""

    def __init__(
        self,
        pool: Pool,
        group: str,
        *,
        member: int = 0,
        size: int = 1,
        owner: Callable[[str], bool] | None = None,
    ) -> None:
        """``owner`` replaces the member rule (an elastic tenure owns a set of buckets)."""
        self._pool = pool
        self._group = group
        self._owns = owner or partial(owns, member, size)

    def owns(self, stream_name: str) -> bool:
        return self._owns(stream_name)

    async def owned(self) -> frozenset[str]:
        rows = await self._fetch(LIST, {"group": self._group})
        return frozenset(row.stream_name for row in rows if self.owns(row.stream_name))

    async def park(
        self, stream_name: str, events: list[Event], error: BaseException, attempts: int
    ) -> None:
        """Record that ``events`` (the first unhandled ones) failed with ``error``."""
        first = events[0]
        params = {
            "group": self._group,
            "stream": stream_name,
            "category": category(stream_name),
            "position": first.position,
            "global_position": first.global_position,
            "event_id": str(first.id),
            "event_type": first.type,
            "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error)),
            "attempts": attempts,
        }
        await self._execute(PARK, params)

    async def retry_requests(self) -> list[ParkedStream]:
        rows = await self._fetch(RETRY_REQUESTED, {"group": self._group})
        return [row for row in rows if self.owns(row.stream_name)]

    async def unpark(self, parked: ParkedStream) -> None:
        params = {"group": self._group, "stream": parked.stream_name, "parked_at": parked.parked_at}
        await self._execute(UNPARK, params)

    async def _fetch(self, query: LiteralString, params: dict[str, object]) -> list[ParkedStream]:
        async with pooled(self._pool, doing="reading parked streams") as conn:
            cursor = await conn.execute(query, params)
            return [ParkedStream(*row) for row in await cursor.fetchall()]

    async def _execute(self, query: LiteralString, params: dict[str, object]) -> None:
        async with pooled(self._pool, doing="writing parked streams") as conn:
            await conn.execute(query, params)


async def list_parked(conn: Connection, group: str | None = None) -> list[ParkedStream]:
    if group is not None:
        validate_group(group)
    cursor = await conn.execute(LIST, {"group": group})
    return [ParkedStream(*row) for row in await cursor.fetchall()]


async def parked_stream(conn: Connection, group: str, stream_name: str) -> ParkedStream | None:
    """Where ``group`` parked the stream, if it did: its events from there on are not handled."""
    row = await (await conn.execute(ONE, {"group": group, "stream": stream_name})).fetchone()
    return None if row is None else ParkedStream(*row)


async def request_retry(conn: Connection, group: str, stream_name: str | None) -> list[str]:
    """Ask the group's runners to replay a parked stream (every one with None)."""
    validate_group(group)
    async with conn.transaction():
        cursor = await conn.execute(REQUEST_RETRY, {"group": group, "stream": stream_name})
        streams = [str(row[0]) for row in await cursor.fetchall()]
    if stream_name is not None and not streams:
        raise ConfigurationError(
            f"stream {stream_name!r} is not parked in group {group!r} (see `projector parked list`)"
        )
    return streams


async def skip_event(
    conn: Connection, group: str, stream_name: str, event_id: uuid.UUID
) -> ParkedStream:
    """Skip a parked stream's failing event on purpose; the stream is replayed after it."""
    validate_group(group)
    params = {"group": group, "stream": stream_name, "event_id": str(event_id)}
    async with conn.transaction():
        row = await (await conn.execute(SKIP, params)).fetchone()
    if row is None:
        raise ConfigurationError(
            f"{stream_name!r} in group {group!r} is not parked at event {event_id}: "
            "give the event id that `projector parked list` shows"
        )
    return ParkedStream(*row)
