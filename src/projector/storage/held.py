"""Held streams: streams a group took out of its read path because their handler failed.

A held stream loses nothing: its row holds the stream position of its first unhandled event,
and its owner replays it from there, in stream order, reading the stream itself. Until then its
events are dropped as they are read, which is what lets the checkpoint move on without it. A
row is in one of two states:

- ``retrying``: the replay is due at ``next_attempt_at`` (the retry policy's backoff);
- ``parked``: the attempts are used up; ``projector failing retry`` (or ``skip``) asks for a
  replay, by setting ``retry_requested_at``.

Which runner owns a row follows from its stream's name (the member or bucket the stream hashes
to), so a restart, a takeover or a rebalance hands held streams over with the rest.
"""

from __future__ import annotations

import enum
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import LiteralString

from projector.errors import ConfigurationError, LeaseLostError
from projector.model.events import Event, category, consumer_group_member, validate_group
from projector.model.share import EVERY_STREAM, Share
from projector.storage.database import Connection, Pool, pooled
from projector.storage.message_store import MEMBER_READS


class HeldState(enum.StrEnum):
    RETRYING = "retrying"
    PARKED = "parked"


# A new episode starts now; a stream failing again keeps the start of its episode.
# A runner writes its held streams' rows only while it still holds the right to project them
# (the fence): a runner cut off from its member's lock or buckets (a "zombie", until it notices)
# must not release a row that the streams' next owner has loaded, since that owner, holding the
# stream out of its read path, moves its checkpoint past the stream's events and relies on the
# row alone to replay them. One fence per kind of right; each holds in the statement's snapshot.
FENCE_NONE: LiteralString = "true"
# A fixed member: its lock session (%(fence_pid)s) still holds the member's advisory lock
# (pg_locks shows a bigint key as its high and low 32 bits, with objsubid 1).
FENCE_LOCK: LiteralString = """EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = %(fence_pid)s AND objsubid = 1
      AND ((classid::bigint << 32) | objid::bigint) = %(fence_key)s)"""
# An elastic member: the stream's bucket is still its own, at the generation it took it at,
# and unexpired (as its fenced checkpoint commit requires).
FENCE_BUCKET: LiteralString = """EXISTS (
    SELECT 1 FROM projector.bucket_leases
    WHERE group_name = %(group)s AND bucket = %(fence_bucket)s AND owner = %(fence_member)s
      AND generation = %(fence_generation)s AND expires_at > now())"""

# One row when written, none when the fence refused it.
_HOLD = """
INSERT INTO projector.held_streams AS h (group_name, stream_name, category, position,
    global_position, event_id, event_type, error, traceback, attempts, state, held_at, failed_at,
    next_attempt_at)
SELECT %(group)s, %(stream)s, %(category)s, %(position)s, %(global_position)s, %(event_id)s,
    %(event_type)s, %(error)s, %(traceback)s, %(attempts)s, %(state)s, now(), now(),
    now() + make_interval(secs => %(delay)s)
WHERE {fence}
ON CONFLICT (group_name, stream_name) DO UPDATE
SET position = EXCLUDED.position, global_position = EXCLUDED.global_position,
    event_id = EXCLUDED.event_id, event_type = EXCLUDED.event_type, error = EXCLUDED.error,
    traceback = EXCLUDED.traceback, attempts = EXCLUDED.attempts, state = EXCLUDED.state,
    failed_at = now(), next_attempt_at = EXCLUDED.next_attempt_at, retry_requested_at = NULL
RETURNING 1
"""

COLUMNS = """group_name, stream_name, category, position, global_position, event_id, event_type,
    error, traceback, attempts, state, held_at, failed_at, next_attempt_at, retry_requested_at"""

LIST = f"""
SELECT {COLUMNS} FROM projector.held_streams
WHERE %(group)s::text IS NULL OR group_name = %(group)s
ORDER BY group_name, held_at
"""

# A runner's own rows (its share's, by the ownership rule every read uses), with the
# server's clock, which next_attempt_at was set by: one row of NULLs when there are none.
OF_SHARE = f"""
SELECT now(), h.group_name, h.stream_name, h.category, h.position, h.global_position,
    h.event_id, h.event_type, h.error, h.traceback, h.attempts, h.state, h.held_at, h.failed_at,
    h.next_attempt_at, h.retry_requested_at
FROM (SELECT) AS server LEFT JOIN projector.held_streams AS h
    ON h.group_name = %(group)s AND {MEMBER_READS}
"""

ONE = f"""
SELECT {COLUMNS} FROM projector.held_streams
WHERE group_name = %(group)s AND stream_name = %(stream)s
"""

REQUEST_RETRY = """
UPDATE projector.held_streams SET retry_requested_at = now()
WHERE group_name = %(group)s AND (%(stream)s::text IS NULL OR stream_name = %(stream)s)
RETURNING stream_name
"""

SKIP = f"""
UPDATE projector.held_streams SET position = position + 1, retry_requested_at = now()
WHERE group_name = %(group)s AND stream_name = %(stream)s AND event_id = %(event_id)s
RETURNING {COLUMNS}
"""

# An operator's replay from a position (`projector replay`): due now. A stream held already is
# moved there; its new failed_at keeps a replay of it in flight from releasing the row.
REQUEST_REPLAY = """
INSERT INTO projector.held_streams AS h (group_name, stream_name, category, position,
    global_position, event_id, event_type, error, traceback, attempts, state, held_at, failed_at,
    next_attempt_at, retry_requested_at)
VALUES (%(group)s, %(stream)s, %(category)s, %(position)s, %(global_position)s, %(event_id)s,
    %(event_type)s, %(reason)s, '', 0, 'retrying', now(), now(), now(), now())
ON CONFLICT (group_name, stream_name) DO UPDATE
SET position = EXCLUDED.position, global_position = EXCLUDED.global_position,
    event_id = EXCLUDED.event_id, event_type = EXCLUDED.event_type, failed_at = now(),
    retry_requested_at = now()
"""

# Only the failure that was replayed: one recorded meanwhile has a newer failed_at. Whether the
# fence passed, whatever was deleted.
_RELEASE = """
WITH fence AS (SELECT {fence} AS passed),
released AS (
    DELETE FROM projector.held_streams
    WHERE group_name = %(group)s AND stream_name = %(stream)s AND failed_at = %(failed_at)s
      AND (SELECT passed FROM fence)
)
SELECT passed FROM fence
"""

HOLD = {fence: _HOLD.format(fence=fence) for fence in (FENCE_NONE, FENCE_LOCK, FENCE_BUCKET)}
RELEASE = {fence: _RELEASE.format(fence=fence) for fence in (FENCE_NONE, FENCE_LOCK, FENCE_BUCKET)}


@dataclass(frozen=True, slots=True)
class LockFence:
    """A fixed member's right: the advisory lock ``key`` held by the session ``pid``."""

    pid: int
    key: int

    def statement_and_params(self, stream_name: str) -> tuple[LiteralString, dict[str, object]]:
        return FENCE_LOCK, {"fence_pid": self.pid, "fence_key": self.key}


@dataclass(frozen=True, slots=True)
class BucketFence:
    """An elastic tenure's right: its buckets (of ``size``) at the generations it took them."""

    member_id: str
    size: int
    generations: Mapping[int, int]

    def statement_and_params(self, stream_name: str) -> tuple[LiteralString, dict[str, object]]:
        bucket = consumer_group_member(stream_name, self.size)
        params: dict[str, object] = {
            "fence_member": self.member_id,
            "fence_bucket": bucket,
            "fence_generation": self.generations.get(bucket, 0) if bucket is not None else 0,
        }
        return FENCE_BUCKET, params


class NoFence:
    """No right to check: a plain run of the testing kit or a one-off replay."""

    def statement_and_params(self, stream_name: str) -> tuple[LiteralString, dict[str, object]]:
        return FENCE_NONE, {}


Fence = LockFence | BucketFence | NoFence


@dataclass(frozen=True, slots=True)
class HeldStream:
    group: str
    stream_name: str
    category: str
    position: int  # of its first unhandled event
    global_position: int
    event_id: uuid.UUID
    event_type: str
    error: str
    traceback: str
    attempts: int  # failed calls in a row, this episode
    state: HeldState
    held_at: datetime  # its first failure, this episode
    failed_at: datetime  # its last failure
    next_attempt_at: datetime | None  # while retrying
    retry_requested_at: datetime | None

    @classmethod
    def of_row(cls, row: tuple[object, ...]) -> HeldStream:
        values = list(row)
        values[10] = HeldState(str(values[10]))
        return cls(*values)  # type: ignore[arg-type]

    def due(self, now: datetime) -> bool:
        """Whether its replay is due at the server's time ``now``."""
        if self.retry_requested_at is not None:
            return True
        return self.next_attempt_at is not None and self.next_attempt_at <= now


@dataclass(frozen=True, slots=True)
class Look:
    """The held streams a runner owns, as the server saw them at ``now``."""

    now: datetime
    streams: list[HeldStream]

    def due(self) -> list[HeldStream]:
        return [held for held in self.streams if held.due(self.now)]

    def seconds_to_next(self) -> float | None:
        """Seconds until the next attempt that is not due yet, if any."""
        ahead = [
            (held.next_attempt_at - self.now).total_seconds()
            for held in self.streams
            if held.next_attempt_at is not None and not held.due(self.now)
        ]
        return min(ahead, default=None)


class HeldStreams:
    """The held streams one runner owns: those of its group that belong to its member."""

    def __init__(
        self,
        pool: Pool,
        group: str,
        share: Share = EVERY_STREAM,
        fence: Fence | None = None,
    ) -> None:
        """``fence``: the right to project the share, checked by every write of a row (see
        `FENCE_LOCK`); a write the fence refuses raises LeaseLostError."""
        self._pool = pool
        self._group = group
        self._share = share
        self._fence: Fence = fence or NoFence()

    async def look(self) -> Look:
        """Every held stream this runner owns, with the server's time."""
        params = {
            "group": self._group,
            "size": self._share.size,
            "owned": sorted(self._share.owned),
        }
        async with pooled(self._pool, doing="reading held streams") as conn:
            cursor = await conn.execute(OF_SHARE, params)
            rows = await cursor.fetchall()
        return Look(rows[0][0], [HeldStream.of_row(row[1:]) for row in rows if row[1] is not None])

    async def hold(
        self,
        stream_name: str,
        first: Event,
        error: BaseException,
        *,
        attempts: int,
        retry_in: float | None,
    ) -> None:
        """Record that the stream's handler failed at ``first`` (its first unhandled event):
        ``retrying`` in ``retry_in`` seconds, or ``parked`` (None)."""
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
            "state": HeldState.PARKED if retry_in is None else HeldState.RETRYING,
            "delay": retry_in,
        }
        await self._fenced(HOLD, stream_name, params)

    async def release(self, held: HeldStream) -> None:
        """Forget a stream replayed to its end, unless it failed again since ``held``."""
        params = {"group": self._group, "stream": held.stream_name, "failed_at": held.failed_at}
        await self._fenced(RELEASE, held.stream_name, params)

    async def _fenced(
        self, statements: dict[str, LiteralString], stream_name: str, params: dict[str, object]
    ) -> None:
        fence, fence_params = self._fence.statement_and_params(stream_name)
        async with pooled(self._pool, doing="writing held streams") as conn:
            cursor = await conn.execute(statements[fence], {**params, **fence_params})
            row = await cursor.fetchone()
        if row is None or not row[0]:
            raise LeaseLostError(
                f"{stream_name}'s held row was not written: this runner no longer holds the "
                f"right to project it (group {self._group!r}); starting over from the "
                "committed checkpoints"
            )


async def list_held(conn: Connection, group: str | None = None) -> list[HeldStream]:
    if group is not None:
        validate_group(group)
    cursor = await conn.execute(LIST, {"group": group})
    return [HeldStream.of_row(row) for row in await cursor.fetchall()]


async def held_stream(conn: Connection, group: str, stream_name: str) -> HeldStream | None:
    """Where ``group`` holds the stream, if it does: its events from there on are not handled."""
    row = await (await conn.execute(ONE, {"group": group, "stream": stream_name})).fetchone()
    return None if row is None else HeldStream.of_row(row)


async def request_retry(conn: Connection, group: str, stream_name: str | None) -> list[str]:
    """Ask the group's runners to replay a held stream now (every one with None)."""
    validate_group(group)
    async with conn.transaction():
        cursor = await conn.execute(REQUEST_RETRY, {"group": group, "stream": stream_name})
        streams = [str(row[0]) for row in await cursor.fetchall()]
    if stream_name is not None and not streams:
        raise ConfigurationError(
            f"stream {stream_name!r} is not held in group {group!r} "
            "(see `projector failing list`)"
        )
    return streams


async def request_replay(conn: Connection, group: str, first: Event, *, reason: str) -> None:
    """Ask the runner that owns ``first``'s stream to deliver the stream again from ``first``
    on: the stream is held (or moved, if held already) at ``first``, its replay due now."""
    validate_group(group)
    params = {
        "group": group,
        "stream": first.stream_name,
        "category": category(first.stream_name),
        "position": first.position,
        "global_position": first.global_position,
        "event_id": str(first.id),
        "event_type": first.type,
        "reason": reason,
    }
    async with conn.transaction():
        await conn.execute(REQUEST_REPLAY, params)


async def skip_event(
    conn: Connection, group: str, stream_name: str, event_id: uuid.UUID
) -> HeldStream:
    """Skip a held stream's failing event on purpose; the stream is replayed after it."""
    validate_group(group)
    params = {"group": group, "stream": stream_name, "event_id": str(event_id)}
    async with conn.transaction():
        row = await (await conn.execute(SKIP, params)).fetchone()
    if row is None:
        raise ConfigurationError(
            f"{stream_name!r} in group {group!r} is not held at event {event_id}: "
            "give the event id that `projector failing list` shows"
        )
    return HeldStream.of_row(row)
