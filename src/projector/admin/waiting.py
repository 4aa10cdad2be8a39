"""Read-your-writes: wait until a group has handled a given global position.

A global position belongs to one stream, hence to one category and, in a consumer group, to one
member; the wait is over once that member's checkpoint for that category has passed it. The
checkpoint is committed every ``checkpoint_interval`` seconds, which bounds how long a wait for
an event that is already handled can take. A transactional projection commits the stream's
position with its read model, so for its groups the wait ends as soon as that position is
visible, checkpoint or not.
"""

from __future__ import annotations

import anyio

from projector.errors import (
    ConfigurationError,
    ParkedStreamsError,
    WaitTimeoutError,
)
from projector.model.events import category, validate_group
from projector.storage import checkpoints, database, held, message_store, stream_positions
from projector.storage.database import Connection
from projector.storage.held import HeldState

DEFAULT_POLL = 0.05
MAX_WAIT = 86_400.0  # seconds: a day


async def wait_for(
    url: str,
    group: str,
    position: int,
    *,
    timeout: float = 30.0,  # noqa: ASYNC109 (part of the API: the error names what was awaited)
    poll: float = DEFAULT_POLL,
) -> None:
    """Return once ``group`` has handled the event at global ``position``; raise
    WaitTimeoutError after ``timeout`` seconds (0 to MAX_WAIT; 0 looks once)."""
    validate_group(group)
    if not 0 <= timeout <= MAX_WAIT:  # nan fails both comparisons
        raise ConfigurationError(f"timeout {timeout!r}: give 0 to {MAX_WAIT:,.0f} seconds")
    conn = await database.connect(url)
    async with conn:
        await conn.set_autocommit(True)
        stream_name, stream_position = await _stream_at(conn, position)
        await _refuse_unread_category(conn, group, stream_name)
        # The deadline is checked between polls, not by cancelling one: a query cancelled
        # midway makes psycopg report it on stderr, and a short timeout would end the wait
        # before it looked at all.
        deadline = anyio.current_time() + timeout
        while True:
            last_seen = await _handled_below(conn, group, stream_name)
            # Past it, yet perhaps only because its stream is held: a retrying stream is
            # waited for, a parked one refused.
            if (
                last_seen is not None
                and last_seen > position
                and not await _held_at(conn, group, stream_name, stream_position, position)
            ):
                return
            if await _applied(conn, group, stream_name, stream_position):
                return
            left = deadline - anyio.current_time()
            if left <= 0:
                break
            await anyio.sleep(min(poll, left))
    where = "no checkpoint yet" if last_seen is None else f"its checkpoint is at {last_seen}"
    raise WaitTimeoutError(
        f"group {group!r} has not handled global position {position} ({stream_name}) "
        f"within {timeout:g} s: {where}"
    )


async def _refuse_unread_category(conn: Connection, group: str, stream_name: str) -> None:
    """A group that has checkpoints, none of them in the stream's category, does not read it:
    waiting would only wait out the timeout."""
    read = {row.category for row in await checkpoints.rows(conn, group)}
    wanted = category(stream_name)
    if read and wanted not in read:
        raise ConfigurationError(
            f"group {group!r} does not read category {wanted!r} (of {stream_name}): it reads "
            f"{', '.join(sorted(read))}. Check --group, or the position"
        )


async def _stream_at(conn: Connection, position: int) -> tuple[str, int]:
    """The stream, and the position in it, of the message at global ``position``."""
    found = await message_store.stream_at(conn, position)
    if found is None:
        raise ConfigurationError(
            f"there is no message at global position {position}: give the global position "
            "of a written message (write_message returns the stream position; read the "
            "message back for its global position)"
        )
    return found


async def _held_at(
    conn: Connection, group: str, stream_name: str, stream_position: int, position: int
) -> bool:
    """Whether the group holds the stream at or before ``stream_position``, retrying it; a
    ParkedStreamsError when it parked it there."""
    found = await held.held_stream(conn, group, stream_name)
    if found is None or found.position > stream_position:
        return False
    if found.state is HeldState.RETRYING:
        return True
    raise ParkedStreamsError(
        f"group {group!r} has parked {stream_name} at position {found.position} "
        f"(global {found.global_position}): the event at global position {position} is "
        f"not handled (`projector failing list --group {group}`; `projector failing retry` "
        "replays it)"
    )


async def _applied(conn: Connection, group: str, stream_name: str, position: int) -> bool:
    """Whether a transactional ``group`` has committed stream ``position`` of the stream (its
    row is committed with its read model)."""
    recorded = await stream_positions.recorded_position(conn, group, stream_name)
    return recorded is not None and recorded >= position


async def _handled_below(conn: Connection, group: str, stream_name: str) -> int | None:
    """The checkpoint of the member of ``group`` that owns ``stream_name``, if it has one."""
    for row in await checkpoints.rows(conn, group):
        if row.category == category(stream_name) and row.share.owns(stream_name):
            return row.position
    return None
