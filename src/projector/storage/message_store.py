"""Every SQL statement that reads or writes the message store (Message DB's interface).

Reads go to ``message_store.messages`` directly rather than through ``get_category_messages``:
the rows are the same (the function runs this very filter and order), and a plain statement
can be prepared once and skips a PL/pgSQL call per batch. The filter is written exactly as the
``messages_category`` index is, so each read is an index range scan.

A consumer-group member's read computes Message DB's partition inline,
``MOD(@hash_64(cardinal_id(stream_name)), size) = member``, with built-in functions only:
Message DB's own group read makes three PL/pgSQL calls per row and is several times slower.
Without help it still reads, and hashes, every row of the category; with the opt-in member index
for its group's size (`member_index`) it reads its own rows only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from itertools import starmap
from typing import Any, LiteralString

from psycopg import AsyncCursor, sql
from psycopg import errors as pg_errors

from projector.errors import MessageStoreError, SchemaMissingError, WrongExpectedVersionError
from projector.model.events import Event, Read
from projector.model.share import EVERY_STREAM, Share
from projector.storage import database
from projector.storage.database import Connection, Pool

READ_CATEGORY = """
SELECT global_position, position, time, stream_name, type, data::text, metadata::text, id::text
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
  AND global_position >= %(position)s
ORDER BY global_position
LIMIT %(batch_size)s
"""

# hash_64(v) is the first 8 bytes of md5(v) as a signed big-endian bigint; the cardinal id is
# the part of the stream id (after the first '-') before its first '+'; names with no id belong
# to no member. `{size}` is filled in with the group's size (see `member_hash`).
_MEMBER_HASH = """mod(abs(('x' || left(md5(split_part(
              substr(stream_name, strpos(stream_name, '-') + 1), '+', 1)), 16))::bit(64)::bigint),
          {size})"""

# Whether a row is member %(member)s's; `{member_hash}` is `_MEMBER_HASH` for a size.
_MEMBER_OF = """strpos(stream_name, '-') > 0
      AND {member_hash} = %(member)s::bigint"""

# Whether a row is one of a share's (see `projector.model.share`): in a partition %(owned)s of
# %(size)s, the ownership rule written once for statements that run now and then (a plain
# group, size 1, reads every row of its category, id-less names included). `Share.owns` is the
# same rule in Python.
_SHARE_PARTITIONS = """strpos(stream_name, '-') > 0
      AND {member_hash} = ANY (%(owned)s::bigint[])""".format(
    member_hash=_MEMBER_HASH.format(size="%(size)s")
)
MEMBER_READS = f"(%(size)s = 1 OR ({_SHARE_PARTITIONS}))"

# The head comes from the same statement, hence the same snapshot: every row of the category
# up to it is visible (write_message locks the category while it draws a position), so a member
# may move its position past other members' rows up to the head.
_READ_MEMBER = """
WITH head AS (
    SELECT max(global_position) AS head
    FROM message_store.messages
    WHERE message_store.category(stream_name) = %(category)s
)
SELECT head.head, m.*
FROM head LEFT JOIN LATERAL (
    SELECT global_position, position, time, stream_name, type, data::text, metadata::text,
           id::text
    FROM message_store.messages
    WHERE message_store.category(stream_name) = %(category)s
      AND global_position >= %(position)s
      AND {member_of}
    ORDER BY global_position
    LIMIT %(batch_size)s
) AS m ON true
"""


def member_hash(size: int) -> LiteralString:
    """The member of a group of ``size`` that owns a row's stream, as an SQL expression with
    the size written in: the expression of the member index for that size (`member_index`),
    which the planner can only match when the size is a constant, not a parameter."""
    if size < 1:
        raise ValueError("a group's size is at least 1")
    return _MEMBER_HASH.format(size=sql.Literal(int(size)).as_string())


def read_member(size: int) -> LiteralString:
    """A member's read for a group of ``size``: the rows of its streams in the category."""
    return _READ_MEMBER.format(member_of=_MEMBER_OF.format(member_hash=member_hash(size)))


# Whether a row is in the buckets %(low)s to %(high)s. A range, not a set: with the bucket index
# (`member_index.bucket_index_name`) on (category, global_position, bucket), a range on its last
# column is checked in the index itself while the scan keeps global order, so a member reads
# only its own rows' heap tuples; `= ANY(...)` there would cost the order (and a sort of the
# whole backlog). The caller drops what the range holds beyond its set.
_IN_BUCKETS = """strpos(stream_name, '-') > 0
      AND {bucket} BETWEEN %(low)s::bigint AND %(high)s::bigint"""


def read_buckets(size: int) -> LiteralString:
    """An elastic member's read in a group of ``size`` buckets: one statement for a range of
    buckets in a category."""
    return _READ_MEMBER.format(member_of=_IN_BUCKETS.format(bucket=member_hash(size)))


# The rows get_stream_messages returns, read through the (stream_name, position) index.
READ_STREAM = """
SELECT global_position, position, time, stream_name, type, data::text, metadata::text, id::text
FROM message_store.messages
WHERE stream_name = %(stream_name)s AND position >= %(position)s
ORDER BY position
LIMIT %(batch_size)s
"""

GLOBAL_POSITION_OF = """
SELECT global_position FROM message_store.messages
WHERE stream_name = %(stream_name)s AND position = %(position)s
"""

CATEGORY_HEAD = """
SELECT global_position
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
ORDER BY global_position DESC
LIMIT 1
"""

# Read before the checkpoints: every event at or below it is visible to the statements after.
STORE_HEAD = "SELECT max(global_position) FROM message_store.messages"

# A forward scan of the category index that stops at the member's first row.
FIRST_OF_MEMBER = f"""
SELECT global_position
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
  AND global_position >= %(position)s
  AND {MEMBER_READS}
ORDER BY global_position
LIMIT 1
"""

# Counts at most %(limit)s rows: enough to tell whether a backlog is past a limit, without
# scanning a long one.
MEMBER_BACKLOG = f"""
SELECT count(*) FROM (
    SELECT 1
    FROM message_store.messages
    WHERE message_store.category(stream_name) = %(category)s
      AND global_position >= %(position)s
      AND {MEMBER_READS}
    LIMIT %(limit)s
) AS backlog
"""

# The head is a backward scan of the category index that stops at the member's newest row. The
# lag is filtered exactly as the messages_category index is, so it scans only the backlog.
# clock_timestamp(), not now(): the age at the moment of reading, whatever transaction the
# caller's connection is in, so never negative for a row this statement can see. `time` is UTC
# with no zone, hence the AT TIME ZONE.
MEMBER_LAG = f"""
SELECT
    (SELECT global_position FROM message_store.messages
     WHERE message_store.category(stream_name) = %(category)s AND {MEMBER_READS}
     ORDER BY global_position DESC LIMIT 1),
    count(*),
    extract(epoch FROM (clock_timestamp() AT TIME ZONE 'utc') - min(time))::float8
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
  AND global_position >= %(position)s
  AND {MEMBER_READS}
"""

# The first event of a category written at or after a time (Message DB's ``time`` is UTC
# without a zone); global positions follow write order, so it is where a replay from then
# starts.
FIRST_SINCE = """
SELECT min(global_position) FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s AND time >= %(time)s
"""

STREAM_AT = """
SELECT stream_name, position FROM message_store.messages WHERE global_position = %(position)s
"""

SCHEMA_PRESENT = """
SELECT to_regclass('message_store.messages') IS NOT NULL,
       to_regprocedure('message_store.write_message(varchar,varchar,varchar,jsonb,jsonb,bigint)')
           IS NOT NULL
"""

WRITE_MESSAGE = """
SELECT message_store.write_message(
    %(id)s, %(stream_name)s, %(type)s, %(data)s::jsonb, %(metadata)s::jsonb, %(expected_version)s
)
"""


class MessageStore:
    """Reads of one message store through a connection pool, of the streams in one `Share`:
    every stream (a plain group), a fixed group's member, or an elastic member's buckets.

    ``starts`` (category -> partition -> position) is where each owned partition starts in a
    category when they differ (an elastic member's buckets keep their own checkpoints): a
    read drops the rows of a partition before its start."""

    def __init__(
        self,
        pool: Pool,
        share: Share = EVERY_STREAM,
        *,
        starts: Mapping[str, Mapping[int, int]] | None = None,
    ) -> None:
        self._pool = pool
        self._share = share
        self._single = next(iter(share.owned)) if len(share.owned) == 1 else None
        if share.size == 1:
            self._statement: LiteralString = ""
        elif self._single is not None:
            self._statement = read_member(share.size)
        else:
            self._statement = read_buckets(share.size)
        # A range, not a set, is what the bucket read asks for (see `_IN_BUCKETS`).
        self._range = (min(share.owned, default=0), max(share.owned, default=-1))
        self._exact = len(share.owned) == self._range[1] - self._range[0] + 1
        self._starts = {category: dict(by_part) for category, by_part in (starts or {}).items()}
        self._highest = {
            category: max(by_part.values(), default=0) for category, by_part in self._starts.items()
        }

    @property
    def share(self) -> Share:
        return self._share

    async def check_schema(self) -> None:
        """Raise SchemaMissingError unless the store's table and write function exist."""
        async with database.pooled(self._pool, doing="looking for the message store") as conn:
            row = await (await conn.execute(SCHEMA_PRESENT)).fetchone()
        if row is None or not all(row):
            raise SchemaMissingError(
                "no message store in this database (message_store.messages / write_message): "
                "point --database-url at your Message DB, or create projector's own store "
                "with `projector migrate --message-store`"
            )

    async def read_category(self, category: str, position: int, batch_size: int) -> Read:
        """Up to ``batch_size`` events of ``category`` (of this share's streams) from global
        ``position`` on, in global order; made into events by `Read.load`."""
        params = {"category": category, "position": position, "batch_size": batch_size}
        if self._share.size == 1:
            rows = await self._rows(READ_CATEGORY, params)
            if not rows.count:
                return Read([], position)
            last = await rows.at(rows.count - 1)
            return Read.loading(partial(_events, rows, 0), last[0] + 1)
        if self._single is not None:
            params["member"] = self._single
        else:
            params["low"], params["high"] = self._range
        rows = await self._rows(self._statement, params)
        return await self._read_partition(rows, category, position, batch_size)

    async def _read_partition(
        self, rows: _Rows, category: str, position: int, batch_size: int
    ) -> Read:
        """A read of part of a category, whose rows start with the category's head
        (`_READ_MEMBER`; a row of nulls after it when the read found none of the part's)."""
        head, first = (await rows.at(0))[:2]
        found = 0 if first is None else rows.count
        if found == batch_size:
            resume_at = (await rows.at(found - 1))[1] + 1
        else:
            # A short read scanned the whole category up to the head of its snapshot.
            resume_at = position if head is None else max(position, head + 1)
        if not found:
            return Read([], resume_at)
        if self._exact and position >= self._highest.get(category, 0):
            # every row read is of an owned partition, past its start
            return Read.loading(partial(_events, rows, 1), resume_at)
        return Read.loading(partial(self._kept, rows, category), resume_at)

    async def _kept(self, rows: _Rows, category: str) -> list[Event]:
        """The events of the rows that are of an owned partition, past its start."""
        starts, share = self._starts.get(category, {}), self._share
        return [
            event
            for event in await _events(rows, 1)
            if (part := share.partition_of(event.stream_name)) is not None
            and part in share.owned
            and event.global_position >= starts.get(part, 0)
        ]

    async def read_stream(self, stream_name: str, position: int, batch_size: int) -> list[Event]:
        """Up to ``batch_size`` events of one stream from stream ``position`` on, in order."""
        params = {"stream_name": stream_name, "position": position, "batch_size": batch_size}
        return await _events(await self._rows(READ_STREAM, params), 0)

    async def _rows(self, query: LiteralString, params: dict[str, object]) -> _Rows:
        async with database.pooled(self._pool, doing="reading the message store") as conn:
            # Binary results: integers and timestamps cost less to load than their text.
            return _Rows(await conn.execute(query, params, binary=True))

    async def category_head(self, category: str) -> int | None:
        """The last global position written to ``category``, or None when it is empty."""
        async with database.pooled(self._pool, doing=f"finding the head of {category}") as conn:
            row = await (await conn.execute(CATEGORY_HEAD, {"category": category})).fetchone()
        return None if row is None else int(row[0])


async def write_message(
    conn: Connection,
    stream_name: str,
    type: str,
    data: object,
    *,
    metadata: object | None = None,
    expected_version: int | None = None,
    id: uuid.UUID | None = None,
) -> int:
    """Append one message with Message DB's ``write_message``; returns its stream position.

    The connection must have ``message_store`` on its search_path (projector's connections do).
    """
    params = {
        "id": str(id or uuid.uuid4()),
        "stream_name": stream_name,
        "type": type,
        "data": json.dumps(data),
        "metadata": None if metadata is None else json.dumps(metadata),
        "expected_version": expected_version,
    }
    try:
        row = await (await conn.execute(WRITE_MESSAGE, params)).fetchone()
    except Exception as exc:
        refusal = _write_refused(exc, str(params["id"]))
        if refusal is None:
            raise
        raise refusal from exc
    assert row is not None
    return int(row[0])


def _write_refused(exc: Exception, message_id: str) -> MessageStoreError | None:
    """The store's refusal of a write as projector's error; None when ``exc`` is not one. Found
    whether the connection translated it or not: the caller's may be any (see `database`)."""
    if (raised := database.refusal(exc, pg_errors.RaiseException)) is not None:
        if "Wrong expected version" in str(raised):
            return WrongExpectedVersionError(database.first_line(raised))
        return MessageStoreError(database.first_line(raised))
    if (duplicate := database.refusal(exc, pg_errors.UniqueViolation)) is not None:
        if duplicate.diag.constraint_name != "messages_id":
            return MessageStoreError(database.first_line(duplicate))
        return MessageStoreError(
            f"a message with id {message_id} is in the store already: each message has an "
            "id of its own (write a new one, or leave id out for a random one)"
        )
    return None


async def global_position_of(conn: Connection, stream_name: str, position: int) -> int:
    """The global position of a stream's message, e.g. of one `write_message` just wrote."""
    params = {"stream_name": stream_name, "position": position}
    row = await (await conn.execute(GLOBAL_POSITION_OF, params)).fetchone()
    if row is None:
        raise MessageStoreError(f"{stream_name} has no message at position {position}")
    return int(row[0])


class _Rows:
    """A read's result, in memory once the statement returns (its connection back in the pool),
    its rows made into Python values only as they are asked for."""

    __slots__ = ("_cursor", "count")

    def __init__(self, cursor: AsyncCursor[tuple[Any, ...]]) -> None:
        self._cursor = cursor
        self.count = cursor.rowcount

    async def at(self, index: int) -> tuple[Any, ...]:
        """Row ``index`` alone."""
        await self._cursor.scroll(index, "absolute")
        row = await self._cursor.fetchone()
        assert row is not None
        return row

    async def all(self) -> list[tuple[Any, ...]]:
        if self.count:  # back to the first, from wherever `at` left it
            await self._cursor.scroll(0, "absolute")
        return await self._cursor.fetchall()


async def _events(rows: _Rows, skip: int) -> list[Event]:
    """The rows as events, each row's first ``skip`` columns left out."""
    if skip:
        return [Event(*row[skip:]) for row in await rows.all() if row[skip] is not None]
    return list(starmap(Event, await rows.all()))


@dataclass(frozen=True, slots=True)
class Partition:
    """The rows a share of a group's streams holds in a category, from global ``position`` on
    (its checkpoint)."""

    category: str
    share: Share
    position: int

    def params(self) -> dict[str, object]:
        return {
            "category": self.category,
            "position": self.position,
            "size": self.share.size,
            "owned": sorted(self.share.owned),
        }


@dataclass(frozen=True, slots=True)
class Lag:
    """A partition's newest event (None: it has none), its events from the position on, and
    the age in seconds of the oldest of them (None: there are none)."""

    head: int | None
    events: int
    seconds: float | None


async def store_head(conn: Connection) -> int:
    """The store's highest global position, 0 when it is empty."""
    row = await (await conn.execute(STORE_HEAD)).fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


async def category_head(conn: Connection, category: str) -> int | None:
    """The category's highest global position, None when it has no event."""
    row = await (await conn.execute(CATEGORY_HEAD, {"category": category})).fetchone()
    return None if row is None else int(row[0])


async def first_unhandled(conn: Connection, partition: Partition) -> int | None:
    """The global position of the partition's first event at or past its position."""
    row = await (await conn.execute(FIRST_OF_MEMBER, partition.params())).fetchone()
    return None if row is None else int(row[0])


async def backlog(conn: Connection, partition: Partition, *, limit: int) -> int:
    """The partition's events at or past its position, counted up to ``limit``."""
    params = {**partition.params(), "limit": limit}
    row = await (await conn.execute(MEMBER_BACKLOG, params)).fetchone()
    assert row is not None  # an aggregate always returns one row
    return int(row[0])


async def lag(conn: Connection, partition: Partition) -> Lag:
    """How far behind the partition's position is."""
    row = await (await conn.execute(MEMBER_LAG, partition.params())).fetchone()
    assert row is not None  # an aggregate always returns one row
    head, events, seconds = row
    return Lag(None if head is None else int(head), int(events), seconds)


async def first_since(conn: Connection, category: str, time: object) -> int | None:
    """The global position of the category's first event written at or after ``time`` (UTC)."""
    row = await (await conn.execute(FIRST_SINCE, {"category": category, "time": time})).fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def stream_at(conn: Connection, global_position: int) -> tuple[str, int] | None:
    """The stream, and the position in it, of the message at ``global_position``."""
    row = await (await conn.execute(STREAM_AT, {"position": global_position})).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


async def read_stream(
    conn: Connection, stream_name: str, position: int, batch_size: int
) -> list[Event]:
    """`MessageStore.read_stream` on a connection of the caller's (e.g. inside a transaction)."""
    params = {"stream_name": stream_name, "position": position, "batch_size": batch_size}
    return await _events(_Rows(await conn.execute(READ_STREAM, params, binary=True)), 0)
