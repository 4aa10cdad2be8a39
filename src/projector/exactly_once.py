"""Transactional projections: the handler's writes and the stream's handled position commit
together, so each event changes the read model exactly once.

Per call (one stream span): one transaction on a pool connection, in pipeline mode, that locks
the stream's row in ``projector.stream_positions``, drops the events at or below it, runs the
handler on the same connection, and records the new position. Redelivered events (after a
crash, a rebalance or a checkpoint reset) are skipped before the handler sees them. The row is
keyed by group, not by member, so it holds across rebalances.
"""

from __future__ import annotations

from projector.database import Pool
from projector.events import Event
from projector.projection import Projection

LOCK_POSITION = """
SELECT position FROM projector.stream_positions
WHERE group_name = %(group)s AND stream_name = %(stream)s
FOR UPDATE
"""

RECORD_POSITION = """
INSERT INTO projector.stream_positions (group_name, stream_name, position, updated_at)
VALUES (%(group)s, %(stream)s, %(position)s, now())
ON CONFLICT (group_name, stream_name)
DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at
"""


class ExactlyOnce:
    """The sink's span handler for a transactional projection."""

    def __init__(self, projection: Projection, pool: Pool, group: str) -> None:
        self._projection = projection
        self._pool = pool
        self._group = group

    async def handle(self, stream_name: str, events: list[Event]) -> int:
        params = {"group": self._group, "stream": stream_name}
        # Pipeline mode: BEGIN goes out with the position read, and the handler's writes (unless
        # it reads results), the new position and COMMIT go out together: two round trips
        # instead of five. Errors surface by COMMIT at the latest, and roll everything back.
        async with self._pool.connection() as conn, conn.pipeline(), conn.transaction():
            row = await (await conn.execute(LOCK_POSITION, params)).fetchone()
            applied = -1 if row is None else int(row[0])
            fresh = [event for event in events if event.position > applied]
            if not fresh:
                return max(events[-1].position, applied) + 1
            next_position = await self._projection.handle_in_transaction(conn, stream_name, fresh)
            if next_position > fresh[0].position:
                await conn.execute(RECORD_POSITION, {**params, "position": next_position - 1})
        return next_position
