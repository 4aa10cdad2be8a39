"""Read models that keep each stream's position in their own rows: one row per stream, with the
stream position of the last event applied to it, and writes guarded by that position.

`GuardedUpsert` writes a batch of spans into such a table in one statement: it locks the rows of
the batch's streams (``FOR UPDATE``), leaves out every event at or below its row's position,
and upserts what is left, moving each row's position to its last event. A redelivered batch
(after a crash, or a commit whose outcome was lost) so changes nothing twice, and two runners
writing one stream's row wait for each other and then see each other's position. The one case
the rows cannot guard is a stream's very first events written by two runners at once (there is
no row to lock yet; only after a runner paused past its lease wakes up as a zombie): there the
member's lock is what keeps them apart, where ``projector.stream_positions`` fences every write.

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
        names = list(self.add) + list(self.latest)
        columns = {**self.add, **self.latest}
        streams: list[str] = []
        positions: list[int] = []
        values: list[list[object]] = [[] for _ in names]
        for stream_name, events in spans.items():
            for event in events:
                streams.append(stream_name)
                positions.append(event.position)
                for index, name in enumerate(names):
                    values[index].append(columns[name].value(event))
        await conn.execute(self.statement, [streams, positions, *values, list(spans)])

    @cached_property
    def statement(self) -> bytes:
        """The statement, composed and rendered once (identifiers need no connection)."""
        return self._compose().as_bytes(None)

    def _compose(self) -> sql.Composed:
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
        sets = [
            sql.SQL("{0} = t.{0} + excluded.{0}").format(sql.Identifier(name)) for name in add
        ] + [sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in latest]
        return sql.SQL(STATEMENT).format(
            table=table,
            stream=stream,
            position=position,
            arrays=sql.SQL(", ").join(casts),
            locals=sql.SQL(", ").join(locals_),
            totals=sql.SQL(", ").join(totals),
            columns=sql.SQL(", ").join(sql.Identifier(name) for name in names),
            sets=sql.SQL(", ").join(sets),
        )


# The rows of the batch's streams are locked first (and, in READ COMMITTED, read again at their
# latest version once the lock is had), so what is left out is what the latest row applied.
# Arrays are bound in binary (%b): rendered as text, psycopg builds them element by element in
# Python, which cost a third of a batch's CPU.
STATEMENT = """
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
