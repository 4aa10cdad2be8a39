"""Replaying one stream of a transactional projection (``projector replay``): the stream's
rows deleted by the projection's ``reset_stream`` hook and its events applied again through
the handler, in one transaction.

Why it is exact beside a running runner: the transaction first locks the stream's row in
``projector.stream_positions`` (``FOR UPDATE``, as a runner's call without a remembered
position does), so it waits for a call of the stream that holds it and keeps the next from
recording a position until it commits. It reads the stream after that, so every event a
runner has applied is among those it applies again. It records the position of the last
event it applied by the compare-and-set every call makes; a runner's call that started from
the old position then fails its own compare-and-set, rolls back and is made again from the
row, dropping what the replay applied (`projector.runtime.exactly_once`). A transaction that
meets another (a deadlock between the reset and a runner's writes, or a row the runner created
meanwhile) is made again.

A projection whose read model holds each stream's position (``positions="read_model"``) has
no row to lock: the reset's deletes wait for a runner's writes of the stream's rows instead,
and the guarded writes of a later call leave out what the replay applied.
"""

from __future__ import annotations

import logging

from projector.errors import ConfigurationError, HandlerError, PositionMovedError, ProjectorError
from projector.model.events import Event
from projector.model.projection import Projection
from projector.model.versions import Replaying, answering
from projector.storage import database, message_store
from projector.storage.database import Connection
from projector.storage.stream_positions import Session, is_conflict, session_on
from projector.storage.versions import begin_statement

logger = logging.getLogger(__name__)

READ_SIZE = 1000  # events per read of the stream, and per handler call
ATTEMPTS = 3  # transactions made before a conflict with a runner is reported


async def replay_stream(
    conn: Connection, projection: Projection, group: str, stream_name: str
) -> int:
    """Apply the stream's events again, from its first, in one transaction on ``conn`` (a
    connection of the caller's own); the number of events applied."""
    if not projection.is_transactional:
        raise ConfigurationError(f"projection {projection.name!r} is not transactional")
    if projection.reset_stream is None:
        raise ConfigurationError(
            f"projection {projection.name!r} has no reset_stream hook: give "
            "Projection(..., reset_stream=...) an async function (conn, stream_name) that "
            "deletes the stream's rows, so its events can be applied again"
        )
    session = await session_on(conn, begin_statement(projection.schema))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with answering(Replaying(True)):
                applied = await _replay(session, projection, group, stream_name)
        except Exception as exc:
            await session.discard()
            if not (isinstance(exc, PositionMovedError) or is_conflict(exc)) or attempt == ATTEMPTS:
                if isinstance(exc, ProjectorError):
                    raise
                raise HandlerError(
                    f"replaying {stream_name} failed, nothing was changed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            logger.warning(
                "replaying %s met a runner's transaction (%s); replaying it again",
                stream_name,
                exc,
                extra={"action": "stream_replay_retried", "group": group, "stream": stream_name},
            )
            continue
        logger.debug(
            "%s: replayed %d event(s) of %s",
            group,
            applied,
            stream_name,
            extra={
                "action": "stream_replayed",
                "group": group,
                "stream": stream_name,
                "events": applied,
            },
        )
        return applied
    raise AssertionError("unreachable")


async def _replay(session: Session, projection: Projection, group: str, stream_name: str) -> int:
    recorded = projection.positions == "projector"
    expected = await session.lock_position(group, stream_name) if recorded else None
    assert projection.reset_stream is not None
    with database.lent(session.conn) as conn:
        await projection.reset_stream(conn, stream_name)
    position = applied = 0
    while True:
        events = await message_store.read_stream(session.conn, stream_name, position, READ_SIZE)
        if not events:
            break
        next_position = await _apply(session.conn, projection, stream_name, events)
        if next_position <= events[0].position:
            raise HandlerError(
                f"the handler handled none of {stream_name}'s events from position "
                f"{events[0].position} when replayed: nothing was changed"
            )
        applied += sum(1 for event in events if event.position < next_position)
        position = next_position
    if not applied:
        raise ConfigurationError(f"stream {stream_name!r} has no events: nothing to replay")
    if expected is None:
        await session.commit()
    else:
        await session.record_and_commit(group, stream_name, position - 1, expected=expected)
    return applied


async def _apply(
    conn: Connection, projection: Projection, stream_name: str, events: list[Event]
) -> int:
    with database.lent(conn):
        if projection.is_batch:
            handled = await projection.handle_batch_in_transaction(conn, {stream_name: events})
            return handled.get(stream_name, events[-1].position + 1)  # left out: handled whole
        return await projection.handle_in_transaction(conn, stream_name, events)
