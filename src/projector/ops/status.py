"""``projector status``: per group member and category, how far behind it is (database only).

Everything comes from the database: the checkpoints table, the message store and ``pg_locks``.
So it works with no projector running, and it shows what every member's runner would see.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg

from projector.model.events import consumer_group_member, validate_group
from projector.ops.groups import CheckpointRow, list_checkpoints
from projector.storage import database, leases, message_store
from projector.storage.checkpoints import check_schema
from projector.storage.database import Connection

if TYPE_CHECKING:
    from rich.table import Table

# Whether a row is one that member %(member)s of %(size)s reads (see message_store); a plain group
# (size 1) reads every row of its category, id-less names included.
_MEMBER_READS = f"(%(size)s = 1 OR ({message_store.MEMBER_PARTITION}))"

# The head is a backward scan of the category index that stops at the member's newest row. The
# lag is filtered exactly as the messages_category index is, so it scans only the backlog.
# clock_timestamp(), not now(): the age at the moment of reading, whatever transaction the
# caller's connection is in, so never negative for a row this statement can see. `time` is UTC
# with no zone, hence the AT TIME ZONE.
MEMBER_LAG = f"""
SELECT
    (SELECT global_position FROM message_store.messages
     WHERE message_store.category(stream_name) = %(category)s AND {_MEMBER_READS}
     ORDER BY global_position DESC LIMIT 1),
    count(*),
    extract(epoch FROM (clock_timestamp() AT TIME ZONE 'utc') - min(time))::float8
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
  AND global_position >= %(position)s
  AND {_MEMBER_READS}
"""


PARKED = """
SELECT group_name, category, stream_name, parked_at FROM projector.parked_streams
WHERE %(group)s::text IS NULL OR group_name = %(group)s
"""


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
        return leases.member_name(self.group, self.member, self.size)


async def collect(conn: Connection, group: str | None = None) -> list[MemberStatus]:
    """The status of every checkpoint (of ``group`` only, if given), in one transaction."""
    if group is not None:
        validate_group(group)
    try:
        async with conn.transaction():
            await check_schema(conn)
            rows = await list_checkpoints(conn, group)
            running: dict[tuple[str, int], bool] = {}
            parked = await (await conn.execute(PARKED, {"group": group})).fetchall()
            return [_with_parked(await _member_status(conn, row, running), parked) for row in rows]
    except psycopg.OperationalError as exc:
        raise database.unavailable_during("reading the status", exc) from exc


async def _member_status(
    conn: Connection, row: CheckpointRow, running: dict[tuple[str, int], bool]
) -> MemberStatus:
    params = {
        "category": row.category,
        "position": row.position,
        "member": row.member,
        "size": row.size,
    }
    found = await (await conn.execute(MEMBER_LAG, params)).fetchone()
    assert found is not None  # an aggregate always returns one row
    head, lag_events, lag_seconds = found
    # A member has one lock for all its categories: look it up once.
    key = (row.group, row.member)
    if key not in running:
        running[key] = await leases.is_held(conn, row.group, row.member)
    return MemberStatus(
        row.group,
        row.member,
        row.size,
        row.category,
        row.position,
        head,
        lag_events,
        lag_seconds,
        row.updated_at,
        running[key],
    )


def _with_parked(
    member: MemberStatus, parked: list[tuple[str, str, str, datetime]]
) -> MemberStatus:
    """The member's status with its share of the group's parked streams in its category."""
    times = [
        parked_at
        for group, category, stream_name, parked_at in parked
        if group == member.group
        and category == member.category
        and (member.size == 1 or consumer_group_member(stream_name, member.size) == member.member)
    ]
    if not times:
        return member
    return dataclasses.replace(member, parked=len(times), oldest_parked_at=min(times))


COLUMNS = (
    "group",
    "category",
    "checkpoint",
    "head",
    "lag (events)",
    "lag (time)",
    "last written",
    "parked",
    "runner",
)
_NUMBERS = {"checkpoint", "head", "lag (events)", "parked"}


def render(rows: list[MemberStatus], *, now: datetime | None = None) -> Table:
    """A table for people; ages are relative to ``now`` (default: this machine's clock). The
    ``parked`` column appears when some member has parked streams, with a caption naming the
    oldest, so that a table with nothing parked stays narrow."""
    # Imported here: only the status command renders, and a runner starts faster without rich.
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

    now = now or datetime.now(UTC)
    parked = any(row.parked for row in rows)
    columns = [c for c in COLUMNS if parked or c != "parked"]
    table = Table(box=None, pad_edge=False, caption=_caption(rows, now))
    for column in columns:
        justify: JustifyMethod = "right" if column in _NUMBERS else "left"
        # On a narrow terminal (80 columns is the default when piped), let the two-word
        # headers wrap rather than have rich cut names and figures short.
        table.add_column(column, justify=justify, no_wrap=" " not in column)
    for row in rows:
        *values, runner = [
            cell
            for column, cell in zip(COLUMNS, _cells(row, now), strict=True)
            if column in columns
        ]
        table.add_row(*values, Text(runner, style="green" if runner == "running" else "dim"))
    return table


def _caption(rows: list[MemberStatus], now: datetime) -> str | None:
    if not rows:
        return "no checkpoints yet: a runner writes its own as it goes"
    oldest = [(row.oldest_parked_at, row) for row in rows if row.oldest_parked_at is not None]
    if not oldest:
        return None
    since, row = min(oldest, key=lambda found: found[0])
    count = sum(r.parked for r in rows)
    age = human_duration((now - since).total_seconds())
    return (
        f"{count} parked stream(s), their events not handled; the oldest parked {age} ago in "
        f"{row.name}/{row.category}: `projector parked list --group {row.group}`"
    )


def _cells(row: MemberStatus, now: datetime) -> tuple[str, ...]:
    return (
        row.name,
        row.category,
        str(row.checkpoint),
        "-" if row.head is None else str(row.head),
        str(row.lag_events),
        "-" if row.lag_seconds is None else human_duration(row.lag_seconds),
        f"{human_duration((now - row.last_written).total_seconds())} ago",
        str(row.parked),
        "running" if row.running else "stopped",
    )


def human_duration(seconds: float) -> str:
    """A short duration: ``<1s``, ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    # A clock a little behind the server's would show a negative age; it is "just now".
    whole = int(max(seconds, 0.0))
    if whole < 1:
        return "<1s"
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def to_json(rows: list[MemberStatus]) -> str:
    """JSON Lines, one object per member and category, named as `checkpoints list --json`
    names them (see the README's JSON output): ints, seconds as floats, ISO 8601 times."""
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
