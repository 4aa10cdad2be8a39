"""Read models that keep each stream's position in their own rows: one row per stream, with the
stream position of the last event applied to it, and writes guarded by that position.

`GuardedUpsert` writes a batch of spans into such a table in one statement that leaves out every
event at or below its row's position and writes what is left, moving each row's position to its
last event. A redelivered batch (after a crash, or a commit whose outcome was lost) so changes
nothing twice, and two runners writing one stream's row wait for each other and then see each
other's position.

On PostgreSQL 15 and later the statement is a ``MERGE`` (`MERGE_STATEMENT`): each stream's
events are summed once, and its row is read and written in one pass, at about the cost of a
plain upsert. A stream's first events written by two runners at once (only after a runner
paused past its lease wakes up as a zombie) make one of them fail on the primary key, to be
retried once the other has committed. Older servers get `UPSERT_STATEMENT`, which locks the
rows first (``FOR UPDATE``) and costs about a fifth more; there two such first writes would
both apply, and the member's lock is what keeps them apart (``projector.stream_positions``
fences every write).

Use it from a ``@projection.transactional_batch(positions="read_model")`` handler, which runs it
in projector's transaction and records nothing beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from psycopg import sql

from projector.errors import ConfigurationError
from projector.model.events import Event
from projector.storage.database import Connection

TYPES = frozenset(
    {
        "bigint",
        "integer",
        "smallint",
        "numeric",
        "double precision",
        "real",
        "text",
        "jsonb",
        "boolean",
        "timestamptz",
        "timestamp",
        "uuid",
        "date",
    }
)


@dataclass(frozen=True, slots=True)
class Column:
    """A read-model column: its SQL type, and each event's value for it."""

    type: str
    value: Callable[[Event], object]

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ConfigurationError(
                f"column type {self.type!r} is not one GuardedUpsert binds: give one of "
                + ", ".join(sorted(TYPES))
            )


@dataclass(frozen=True)
class GuardedUpsert:
    """The upsert of a batch's events into ``table``, one row per stream (``stream_column``, its
    primary key or a unique column) holding the last position applied (``position_column``).
    Columns in ``add`` are summed into the row; those in ``latest`` take the value of the
    stream's last event applied."""

    table: str
    add: Mapping[str, Column] = field(default_factory=dict)
    latest: Mapping[str, Column] = field(default_factory=dict)
    stream_column: str = "stream_name"
    position_column: str = "position"
    schema: str | None = None

    def __post_init__(self) -> None:
        if not (self.add or self.latest):
            raise ConfigurationError(
                f"GuardedUpsert({self.table!r}) writes no column: give add= or latest="
            )

    async def execute(self, conn: Connection, spans: Mapping[str, list[Event]]) -> None:
        """Write ``spans`` (each stream's events in stream order) in one statement."""
        # One array element per event, each column's built by one `map` over all the events.
        events = [event for span in spans.values() for event in span]
        streams = [name for name, span in spans.items() for _ in span]
        positions = [event.position for event in events]
        values = [
            list(map(column.value, events))
            for column in (*self.add.values(), *self.latest.values())
        ]
        if conn.info.server_version >= MERGE_SINCE:
            await conn.execute(self.merge_statement, [streams, positions, *values])
        else:
            await conn.execute(self.statement, [streams, positions, *values, list(spans)])

    @cached_property
    def statement(self) -> bytes:
        """The statement for servers before PostgreSQL 15 (`UPSERT_STATEMENT`), composed and
        rendered once (identifiers need no connection)."""
        return self._compose(UPSERT_STATEMENT).as_bytes(None)

    @cached_property
    def merge_statement(self) -> bytes:
        """The statement for PostgreSQL 15 and later (`MERGE_STATEMENT`)."""
        return self._compose(MERGE_STATEMENT).as_bytes(None)

    def _compose(self, template: str) -> sql.Composed:
        add, latest = list(self.add), list(self.latest)
        table = (
            sql.Identifier(self.table)
            if self.schema is None
            else sql.Identifier(self.schema, self.table)
        )
        stream, position = sql.Identifier(self.stream_column), sql.Identifier(self.position_column)
        names = [*add, *latest]
        locals_ = [sql.Identifier(f"c{index}") for index in range(len(names))]
        casts = [
            sql.SQL("%b::{}[]").format(sql.SQL(column.type))
            for column in (*self.add.values(), *self.latest.values())
        ]
        totals = [sql.SQL("sum({0}) AS {0}").format(local) for local in locals_[: len(add)]] + [
            sql.SQL("(array_agg({0} ORDER BY e_position DESC))[1] AS {0}").format(local)
            for local in locals_[len(add) :]
        ]
        column_names = [sql.Identifier(name) for name in names]
        # (column, its local in the statement): summed ones first, then those of the last event.
        pairs = list(zip(column_names, locals_, strict=True))
        added, lasts = pairs[: len(add)], pairs[len(add) :]
        sets = [sql.SQL("{0} = t.{0} + excluded.{0}").format(name) for name, _ in added] + [
            sql.SQL("{0} = excluded.{0}").format(name) for name, _ in lasts
        ]
        # MERGE: what a stream's events add, whole (none of them applied yet) or only past the
        # row's position (some were: a batch delivered again in part); the latest values.
        whole = [sql.SQL("{0} = t.{0} + f.{1}").format(name, local) for name, local in added]
        past = [
            sql.SQL(
                "{0} = t.{0} + (SELECT sum({1}) FROM e "
                "WHERE e_stream = f.e_stream AND e_position > t.{2})"
            ).format(name, local, position)
            for name, local in added
        ]
        newest = [sql.SQL("{0} = f.{1}").format(name, local) for name, local in lasts]
        return sql.SQL(template).format(
            table=table,
            stream=stream,
            position=position,
            arrays=sql.SQL(", ").join(casts),
            locals=sql.SQL(", ").join(locals_),
            totals=sql.SQL(", ").join(totals),
            columns=sql.SQL(", ").join(column_names),
            sets=sql.SQL(", ").join(sets),
            whole=sql.SQL(", ").join([*whole, *newest]),
            past=sql.SQL(", ").join([*past, *newest]),
            f_locals=sql.SQL(", ").join(sql.SQL("f.{}").format(local) for local in locals_),
        )


# The first server version (``server_version_num``) that has MERGE.
MERGE_SINCE = 150000

# Arrays are bound in binary (%b): rendered as text, psycopg builds them element by element in
# Python, which cost a third of a batch's CPU.
#
# Each stream's row is matched once; its WHEN conditions are checked again on the latest version
# of the row when another transaction changed it meanwhile (READ COMMITTED), so what is applied
# is exactly what the latest row has not. The second branch, a batch delivered again in part, is
# rare (after a crash), and sums that stream's events again past the row's position.
MERGE_STATEMENT = """
WITH e (e_stream, e_position, {locals}) AS (
    SELECT * FROM unnest(%b::text[], %b::bigint[], {arrays})
)
MERGE INTO {table} AS t
USING (
    SELECT e_stream, min(e_position) AS e_first, max(e_position) AS e_last, {totals}
    FROM e GROUP BY e_stream
) AS f
ON t.{stream} = f.e_stream
WHEN MATCHED AND t.{position} < f.e_first THEN
    UPDATE SET {position} = f.e_last, {whole}
WHEN MATCHED AND t.{position} < f.e_last THEN
    UPDATE SET {position} = f.e_last, {past}
WHEN NOT MATCHED THEN
    INSERT ({stream}, {position}, {columns}) VALUES (f.e_stream, f.e_last, {f_locals})
"""

# Before PostgreSQL 15: the rows of the batch's streams are locked first (and, in READ
# COMMITTED, read again at their latest version once the lock is had), so what is left out is
# what the latest row applied.
UPSERT_STATEMENT = """
WITH e (e_stream, e_position, {locals}) AS (
    SELECT * FROM unnest(%b::text[], %b::bigint[], {arrays})
),
current AS (
    SELECT t.{stream} AS c_stream, t.{position} AS c_position
    FROM {table} AS t WHERE t.{stream} = ANY (%b::text[])
    FOR UPDATE
),
fresh AS (
    SELECT e_stream, max(e_position) AS e_last, {totals}
    FROM e LEFT JOIN current ON c_stream = e_stream
    WHERE e_position > coalesce(c_position, -1)
    GROUP BY e_stream
)
INSERT INTO {table} AS t ({stream}, {position}, {columns})
SELECT e_stream, e_last, {locals} FROM fresh
ON CONFLICT ({stream}) DO UPDATE SET {position} = excluded.{position}, {sets}
WHERE t.{position} < excluded.{position}
"""
