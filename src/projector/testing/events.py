"""Events for tests: `event` builds one with keyword arguments, no database needed.

An event built here has no position yet (`UNWRITTEN`) unless it is given one: writing it
(`Database.write`) lets the store number it, and `call_handler` numbers it as the store would.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from projector.model.events import Event

UNWRITTEN = -1
"""The position (and global position) of an event no store has numbered yet."""


def event(
    type: str,
    /,
    *,
    stream: str,
    data: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    id: uuid.UUID | str | None = None,
    position: int = UNWRITTEN,
    global_position: int = UNWRITTEN,
    time: datetime | None = None,
    **fields: Any,
) -> Event:
    """An event of ``type`` in ``stream`` whose data is ``fields`` (and ``data``, for keys that
    are not Python names or that clash with these arguments)::

        event("Deposited", stream="account-1", amount=5)
        event("Renamed", stream="account-1", data={"from": "a", "to": "b"})

    ``time`` is UTC without a zone, as Message DB stores it (default: now); ``id`` a new UUID.
    """
    body = {**(data or {}), **fields}
    return Event(
        global_position,
        position,
        time or datetime.now(UTC).replace(tzinfo=None),
        stream,
        type,
        json.dumps(body),
        None if metadata is None else json.dumps(metadata),
        id or uuid.uuid4(),
    )


def placed(events: Iterable[Event]) -> list[Event]:
    """``events``, those with no position numbered as the store would number them written in
    this order: each stream's positions from 0, global positions from 1, each carrying on
    after the last one given before it."""
    next_position: dict[str, int] = {}
    next_global = 1
    result = []
    for e in events:
        position = next_position.get(e.stream_name, 0) if e.position == UNWRITTEN else e.position
        global_position = next_global if e.global_position == UNWRITTEN else e.global_position
        if (position, global_position) != (e.position, e.global_position):
            e = _moved(e, global_position, position)
        next_position[e.stream_name] = position + 1
        next_global = global_position + 1
        result.append(e)
    return result


def spans(events: Iterable[Event]) -> dict[str, list[Event]]:
    """The events by stream, each stream's in the order given (as a batch handler gets them)."""
    by_stream: dict[str, list[Event]] = {}
    for e in events:
        by_stream.setdefault(e.stream_name, []).append(e)
    return by_stream


def _moved(e: Event, global_position: int, position: int) -> Event:
    metadata = e.metadata
    return Event(
        global_position,
        position,
        e.time,
        e.stream_name,
        e.type,
        json.dumps(e.data),
        None if metadata is None else json.dumps(metadata),
        e.id,
    )
