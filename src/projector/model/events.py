"""Events as projector hands them to handlers, and Message DB's stream-name rules.

A stream name is ``category-id``: the category is everything before the first ``-``, the id
everything after it, and the cardinal id is the id up to its first ``+`` (compound ids).
Consumer-group members partition streams by ``hash_64(cardinal_id)``, as Message DB does.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson

from projector.errors import InvalidNameError

_CATEGORY_RE = re.compile(r"[A-Za-z0-9_.:+]+")
_GROUP_RE = re.compile(r"[A-Za-z0-9_.:]+")
MAX_NAME_LENGTH = 200


FIRST_POSITION = 1  # Message DB's global positions start at 1
MAX_POSITION = 2**63 - 1  # positions are bigint
# Members of a fixed group: each holds an advisory lock, and administration takes them all.
MAX_GROUP_SIZE = 10_000


def category(stream_name: str) -> str:
    """The category of a stream: everything before the first ``-``."""
    return stream_name.partition("-")[0]


def stream_id(stream_name: str) -> str | None:
    """The id of a stream: everything after the first ``-``, or None when there is none."""
    _, dash, rest = stream_name.partition("-")
    return rest if dash else None


def cardinal_id(stream_name: str) -> str | None:
    """The id up to its first ``+``, which decides a stream's consumer-group member."""
    id_ = stream_id(stream_name)
    return None if id_ is None else id_.partition("+")[0]


def hash_64(value: str) -> int:
    """Message DB's ``hash_64``: the first 8 bytes of md5 as a signed big-endian integer."""
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def consumer_group_member(stream_name: str, group_size: int) -> int | None:
    """The member of a group of ``group_size`` that owns a stream, or None for id-less names."""
    id_ = cardinal_id(stream_name)
    # Postgres' MOD keeps the dividend's sign; Message DB takes @ (abs) of the hash first.
    return None if id_ is None else abs(hash_64(id_)) % group_size


def member_name(group: str, member: int, size: int) -> str:
    """Who owns a member's checkpoints: ``<group>``, or ``<group>-<member>`` in a consumer
    group."""
    return group if size == 1 else f"{group}-{member}"


def validate_category(name: str) -> str:
    """Return ``name`` if it is a category the store can hold, else raise InvalidNameError."""
    if not name or len(name) > MAX_NAME_LENGTH or not _CATEGORY_RE.fullmatch(name):
        raise InvalidNameError(
            f"category {name!r} is not valid: use 1-{MAX_NAME_LENGTH} characters from "
            "A-Z a-z 0-9 _ . : + (no '-', which separates a category from a stream id)"
        )
    return name


def validate_group(name: str) -> str:
    """Return ``name`` if it is a usable group name, else raise InvalidNameError."""
    if not name or len(name) > MAX_NAME_LENGTH or not _GROUP_RE.fullmatch(name):
        raise InvalidNameError(
            f"group {name!r} is not valid: use 1-{MAX_NAME_LENGTH} characters from "
            "A-Z a-z 0-9 _ . : (no '-', which projector uses for <group>-<member>)"
        )
    return name


class Event:
    """One message of the store, as read by a source.

    ``data``, ``metadata`` and ``id`` are decoded on first access: a catch-up with a handler that
    looks only at ``type`` or positions never pays for JSON decoding.
    """

    __slots__ = (
        "_data",
        "_data_json",
        "_id",
        "_metadata",
        "_metadata_json",
        "global_position",
        "position",
        "stream_name",
        "time",
        "type",
    )

    global_position: int
    position: int
    stream_name: str
    type: str
    time: datetime

    def __init__(
        self,
        global_position: int,
        position: int,
        time: datetime,
        stream_name: str,
        type: str,
        data: str | None,
        metadata: str | None,
        id: str | uuid.UUID,
    ) -> None:
        self.global_position = global_position
        self.position = position
        self.time = time
        self.stream_name = stream_name
        self.type = type
        self._data_json = data
        self._metadata_json = metadata
        self._id = id
        self._data: Any = _UNDECODED
        self._metadata: Any = _UNDECODED

    @property
    def id(self) -> uuid.UUID:
        if not isinstance(self._id, uuid.UUID):
            self._id = uuid.UUID(self._id)
        return self._id

    @property
    def data(self) -> Any:
        """The decoded JSON data (Message DB stores an object; older writers may store null)."""
        if self._data is _UNDECODED:
            self._data = _decode(self._data_json)
        return self._data

    @property
    def metadata(self) -> Any:
        """The decoded JSON metadata, or None when the message has none."""
        if self._metadata is _UNDECODED:
            self._metadata = _decode(self._metadata_json)
        return self._metadata

    @property
    def category(self) -> str:
        return category(self.stream_name)

    def __repr__(self) -> str:
        return (
            f"Event(stream_name={self.stream_name!r}, position={self.position}, "
            f"global_position={self.global_position}, type={self.type!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.global_position, self.stream_name, self.position) == (
            other.global_position,
            other.stream_name,
            other.position,
        )

    def __hash__(self) -> int:
        return hash((self.global_position, self.stream_name, self.position))


_UNDECODED: Any = object()


# orjson decodes several times faster than json, and agrees with it on everything jsonb can
# hold but numbers of 19 digits or more: it rounds integers past 64 bits to floats. Those few
# texts go to json, which keeps them exact; so do texts orjson refuses, so that malformed data
# fails with json's own message.
_LONG_NUMBER = re.compile(r"\d{19}")


def _decode(text: str | None) -> Any:
    if text is None:
        return None
    if _LONG_NUMBER.search(text) is None:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)  # malformed: json raises its own error (or accepts it)
    return json.loads(text)


class Read:
    """One read of a category: its events, and ``resume_at``, the global position the next read
    starts from (past the events, and past rows of other members the read went over). A "next
    position" elsewhere is always a stream position.

    A store's read knows ``resume_at``, and whether it ``found`` rows at all, as soon as the
    rows are in, before any of them is made into an `Event`: `load` does that, so that a source
    can send its next read first (see `projector.pipeline.source`).
    """

    __slots__ = ("_events", "_load", "found", "resume_at")

    def __init__(self, events: list[Event], resume_at: int) -> None:
        self._events: list[Event] | None = events
        self._load: Callable[[], Awaitable[list[Event]]] | None = None
        self.resume_at = resume_at
        self.found = bool(events)

    @classmethod
    def loading(cls, load: Callable[[], Awaitable[list[Event]]], resume_at: int) -> Read:
        """A read that found rows, whose events ``load`` makes from them (already in memory)
        when asked."""
        read = cls([], resume_at)
        read._events, read._load, read.found = None, load, True
        return read

    async def load(self) -> list[Event]:
        """The read's events (made from its rows the first time)."""
        if self._events is None:
            assert self._load is not None
            self._events, self._load = await self._load(), None
        return self._events

    def __repr__(self) -> str:
        events = "not loaded" if self._events is None else f"{len(self._events)} events"
        return f"Read({events}, resume_at={self.resume_at})"
