"""A test's database: a message store and projector's tables, to write events to and to read a
read model from (`projector_db` gives each test one of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

from projector.model.events import Event
from projector.storage import database, held, message_store
from projector.storage.database import Connection
from projector.storage.held import HeldStream
from projector.testing.events import UNWRITTEN
from projector.testing.snapshots import snapshot

Params = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class Database:
    """The database at ``url``: any with a message store and projector's tables will do."""

    url: str

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Connection]:
        """A connection in autocommit, with ``message_store`` on its path (as handlers get): its
        statements raise psycopg's errors, as a handler's do (a lost connection aside)."""
        conn = await database.connect_lent(self.url)
        async with conn:
            await conn.set_autocommit(True)
            yield conn

    async def write(self, *events: Event) -> list[Event]:
        """Append ``events`` in one transaction with ``write_message``; the events as stored,
        with their positions. An event given a position is written only if it lands there
        (its ``expected_version`` is the position before)."""
        async with self.connect() as conn:
            async with conn.transaction():
                positions = [await _write(conn, e) for e in events]
            return [
                (await message_store.read_stream(conn, e.stream_name, position, 1))[0]
                for e, position in zip(events, positions, strict=True)
            ]

    async def execute(self, statement: LiteralString, params: Params | None = None) -> None:
        """Run a statement (or, with no ``params``, several), committed at once."""
        async with self.connect() as conn:
            await conn.execute(statement, params)

    async def rows(
        self, query: LiteralString, params: Params | None = None
    ) -> list[dict[str, Any]]:
        """The rows ``query`` returns, each as a dict by column name."""
        columns, found = await self._fetch(query, params)
        return [dict(zip(columns, row, strict=True)) for row in found]

    async def snapshot(
        self, query: LiteralString, params: Params | None = None, *, sort: bool = True
    ) -> str:
        """The rows ``query`` returns as an aligned text table (`projector.testing.snapshots`)."""
        columns, found = await self._fetch(query, params)
        return snapshot(columns, found, sort=sort)

    async def held_streams(self, group: str) -> list[HeldStream]:
        """The group's held streams, retrying or parked, as `projector failing list` shows them."""
        async with self.connect() as conn:
            return await held.list_held(conn, group)

    async def _fetch(
        self, query: LiteralString, params: Params | None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        async with self.connect() as conn:
            cursor = await conn.execute(query, params)
            if cursor.description is None:
                raise ValueError(f"the query returns no rows to compare: {query!r}")
            return [column.name for column in cursor.description], await cursor.fetchall()


def as_database(database: Database | str) -> Database:
    return database if isinstance(database, Database) else Database(database)


async def _write(conn: Connection, e: Event) -> int:
    expected = None if e.position == UNWRITTEN else e.position - 1
    return await message_store.write_message(
        conn,
        e.stream_name,
        e.type,
        e.data,
        metadata=e.metadata,
        id=e.id,
        expected_version=expected,
    )
