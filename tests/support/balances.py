"""An account-balances read model, written by a transactional projection that is NOT idempotent
on its own (it adds each event's amount), so any double application shows in the balances."""

from __future__ import annotations

import random

import anyio
import psycopg

from projector import Event, Projection, write_message
from projector.storage.database import Connection, connect

CREATE = """
CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, balance bigint NOT NULL)
"""

ADD = """
INSERT INTO balances AS b (account, balance) VALUES (%(account)s, %(delta)s)
ON CONFLICT (account) DO UPDATE SET balance = b.balance + EXCLUDED.balance
"""

FOLD = """
SELECT stream_name,
       sum(CASE WHEN type = 'Withdrawn' THEN -1 ELSE 1 END * (data->>'amount')::bigint)
FROM message_store.messages
WHERE message_store.category(stream_name) = 'account'
GROUP BY stream_name
"""


def balances_projection(name: str = "balances", *, delay: float = 0.0) -> Projection:
    projection = Projection(name)

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: Connection) -> None:
        await anyio.sleep(delay)
        delta = sum(_amount(event) for event in events)
        await conn.execute(ADD, {"account": stream_name, "delta": delta})

    return projection


def _amount(event: Event) -> int:
    amount = int(event.data["amount"])
    return -amount if event.type == "Withdrawn" else amount


async def write_transactions(url: str, *, accounts: int, events: int, seed: int) -> None:
    rng = random.Random(seed)
    conn = await connect(url)
    async with conn, conn.transaction():
        await conn.execute(CREATE)
        for _ in range(events):
            kind = rng.choice(("Deposited", "Deposited", "Withdrawn"))
            amount = rng.randrange(1, 100)
            await write_message(
                conn, f"account-{rng.randrange(accounts)}", kind, {"amount": amount}
            )


def projected_and_folded(url: str) -> tuple[dict[str, int], dict[str, int]]:
    """The read model's balances, and the balances folded straight from the events."""
    with psycopg.connect(url) as conn:
        projected: dict[str, int] = dict(
            conn.execute("SELECT account, balance FROM balances").fetchall()
        )
        folded: dict[str, int] = dict(conn.execute(FOLD).fetchall())
    return projected, {k: int(v) for k, v in folded.items()}
