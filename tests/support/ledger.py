"""Versions of one account-balances projection, for the rebuild tests.

Version 1 keeps ``balances (account, balance)``; version 2 changes the schema, adding the
count of each account's events. Both are transactional and NOT idempotent on their own (they
add), so an event applied twice shows in the balances; both create their table in their
version's schema (``setup``) and delete a stream's row for `projector replay`
(``reset_stream``). `tests.support.balances.balances_projection` is the same version 1 from
before versions: no setup, its table in ``public``.
"""

from __future__ import annotations

import anyio
import psycopg
from psycopg import sql

from projector import Event, Projection
from projector.storage.database import Connection
from tests.support.balances import FOLD

CREATE = {
    1: "CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL)",
    2: "CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL,"
    " events integer NOT NULL)",
}
ADD = {
    1: "INSERT INTO balances AS b (account, balance) VALUES (%(account)s, %(delta)s)"
    " ON CONFLICT (account) DO UPDATE SET balance = b.balance + EXCLUDED.balance",
    2: "INSERT INTO balances AS b (account, balance, events)"
    " VALUES (%(account)s, %(delta)s, %(events)s)"
    " ON CONFLICT (account) DO UPDATE SET balance = b.balance + EXCLUDED.balance,"
    " events = b.events + EXCLUDED.events",
}
RESET = "DELETE FROM balances WHERE account = %(account)s"


def ledger(version: int, *, name: str = "balances", delay: float = 0.0) -> Projection:
    """Version ``version`` (1 or 2) of the balances projection, reading category account."""

    async def setup(conn: Connection) -> None:
        await conn.execute(CREATE[version])

    async def reset_stream(conn: Connection, stream_name: str) -> None:
        await conn.execute(RESET, {"account": stream_name})

    projection = Projection(
        name,
        categories=["account"],
        version=version,
        setup=setup,
        reset_stream=reset_stream,
    )

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None:
        await anyio.sleep(delay)
        delta = sum(_amount(event) for event in events)
        params = {"account": stream_name, "delta": delta, "events": len(events)}
        await conn.execute(ADD[version], params)

    return projection


def _amount(event: Event) -> int:
    amount = int(event.data["amount"])
    return -amount if event.type == "Withdrawn" else amount


def balances_in(url: str, schema: str) -> dict[str, int]:
    """The balances table (or view) of a schema, by account."""
    query = sql.SQL("SELECT account, balance FROM {}.balances").format(sql.Identifier(schema))
    with psycopg.connect(url) as conn:
        return {str(account): int(balance) for account, balance in conn.execute(query)}


def folded(url: str) -> dict[str, int]:
    """The balances folded straight from the events."""
    with psycopg.connect(url) as conn:
        return {str(account): int(total) for account, total in conn.execute(FOLD)}
