"""The demo's tables and database (`projector demo`): its read model of account balances, the
total the events say it should hold, and the database it runs in.

The read model is also the docs' example of an idempotent handler: each account row
remembers the last stream position it applied, so a redelivered event changes nothing.
"""

from __future__ import annotations

from psycopg import sql

from projector.storage.database import Connection, SyncConnection

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS demo_balances (
    account_id text PRIMARY KEY,
    balance bigint NOT NULL,
    version bigint NOT NULL
)
"""

# Only the events above the row's version count, so a redelivered span is applied once.
APPLY = """
INSERT INTO demo_balances AS b (account_id, balance, version)
VALUES (%(account_id)s, (SELECT sum(d) FROM unnest(%(deltas)s::bigint[]) AS d), %(version)s)
ON CONFLICT (account_id) DO UPDATE
SET balance = b.balance + (
        SELECT coalesce(sum(u.d), 0)
        FROM unnest(%(positions)s::bigint[], %(deltas)s::bigint[]) AS u(p, d)
        WHERE u.p > b.version
    ),
    version = greatest(b.version, EXCLUDED.version)
"""

BALANCES = "SELECT count(*), coalesce(sum(balance), 0) FROM demo_balances"

# What the balances add up to, straight from the events.
EXPECTED_TOTAL = """
SELECT coalesce(sum(CASE WHEN type = 'Withdrawn' THEN -1 ELSE 1 END * (data->>'amount')::bigint), 0)
FROM message_store.messages WHERE message_store.category(stream_name) = %(category)s
"""

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %(name)s"


async def create_tables(conn: Connection) -> None:
    await conn.execute(CREATE_TABLE)


async def apply(
    conn: Connection, account_id: str, *, positions: list[int], deltas: list[int]
) -> None:
    """Add the deltas of the events above the account's version to its balance."""
    params = {
        "account_id": account_id,
        "positions": positions,
        "deltas": deltas,
        "version": positions[-1],
    }
    await conn.execute(APPLY, params)


async def balances(conn: Connection, category: str) -> tuple[int, int, int]:
    """(accounts, total balance in the read model, total computed from the events)."""
    accounts, projected = await (await conn.execute(BALANCES)).fetchone() or (0, 0)
    cursor = await conn.execute(EXPECTED_TOTAL, {"category": category})
    (expected,) = await cursor.fetchone() or (0,)
    return int(accounts), int(projected), int(expected)


def ensure_database(conn: SyncConnection, name: str) -> None:
    """Create the database ``name`` unless it exists (``conn`` in autocommit)."""
    if conn.execute(DATABASE_EXISTS, {"name": name}).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
