"""Every SQL statement that reads or writes the message store (Message DB's interface).

Reads go to ``message_store.messages`` directly rather than through ``get_category_messages``:
the rows are the same (the function runs this very filter and order), and a plain statement
can be prepared once and skips a PL/pgSQL call per batch. The filter is written exactly as the
``messages_category`` index is, so each read is an index range scan.
"""

from __future__ import annotations

import json
import uuid

from psycopg import errors as pg_errors

from projector.database import Connection, Pool
from projector.errors import MessageStoreError, SchemaMissingError, WrongExpectedVersionError
from projector.events import Event

READ_CATEGORY = """
SELECT global_position, position, time, stream_name, type, data::text, metadata::text, id::text
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
  AND global_position >= %(position)s
ORDER BY global_position
LIMIT %(batch_size)s
"""

CATEGORY_HEAD = """
SELECT global_position
FROM message_store.messages
WHERE message_store.category(stream_name) = %(category)s
ORDER BY global_position DESC
LIMIT 1
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
    """Reads of one message store through a connection pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def check_schema(self) -> None:
        """Raise SchemaMissingError unless the store's table and write function exist."""
        async with self._pool.connection() as conn:
            row = await (await conn.execute(SCHEMA_PRESENT)).fetchone()
        if row is None or not all(row):
            raise SchemaMissingError(
                "no message store in this database (message_store.messages / write_message): "
                "point --database-url at your Message DB, or create projector's own store "
                "with `projector migrate --message-store`"
            )

    async def read_category(self, category: str, position: int, batch_size: int) -> list[Event]:
        """Up to ``batch_size`` events of ``category`` from global ``position`` on, in order."""
        params = {"category": category, "position": position, "batch_size": batch_size}
        async with self._pool.connection() as conn:
            cursor = await conn.execute(READ_CATEGORY, params)
            rows = await cursor.fetchall()
        return [Event(*row) for row in rows]

    async def category_head(self, category: str) -> int | None:
        """The last global position written to ``category``, or None when it is empty."""
        async with self._pool.connection() as conn:
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
    except pg_errors.RaiseException as exc:
        if "Wrong expected version" in str(exc):
            raise WrongExpectedVersionError(str(exc).splitlines()[0]) from exc
        raise MessageStoreError(str(exc).splitlines()[0]) from exc
    assert row is not None
    return int(row[0])
