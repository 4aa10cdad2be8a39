"""Malformed events go through the failure policy, named, never crashing the reader or vanishing."""

from __future__ import annotations

import psycopg
import pytest

from projector import Event, Projection
from projector.storage.held import HeldState, list_held
from tests.support.projecting import checkpoint, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio

# Rows a careless writer could leave behind: data that is not an object, a null, and a stream
# name with no id (write_message's rules are not enforced on plain INSERTs).
MALFORMED = """
INSERT INTO message_store.messages (stream_name, position, type, data, metadata)
VALUES ('account-odd', 0, 'Deposited', '"ten"', NULL),
       ('account-nulls', 0, 'Deposited', 'null', '[1, 2]'),
       ('account', 0, 'Deposited', '{"amount": "lots"}', NULL)
"""


async def test_malformed_events_are_parked_by_name_while_the_rest_is_projected(
    database_url: str,
) -> None:
    await write_events(database_url, {f"account-{i}": 2 for i in range(20)})
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute(MALFORMED)
    await write_events(database_url, {f"account-{i}": 1 for i in range(20, 30)})
    totals: dict[str, int] = {}
    projection = Projection("totals")

    @projection.handler
    async def add(stream_name: str, events: list[Event]) -> None:
        amounts = [
            int(event.data["n"] if "n" in event.data else event.data["amount"]) for event in events
        ]
        totals[stream_name] = totals.get(stream_name, 0) + sum(amounts)

    settings = settings_for(
        database_url, categories=("account",), retry_max_attempts=1, retry_base=0.01
    )
    await run_projection(projection, settings)

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        parked = {row.stream_name: row for row in await list_held(conn, "totals")}
        head = await (
            await conn.execute("SELECT max(global_position) FROM message_store.messages")
        ).fetchone()
    assert set(parked) == {"account-odd", "account-nulls", "account"}
    assert "TypeError" in parked["account-odd"].error
    assert parked["account"].error.startswith("ValueError")
    assert all(row.position == 0 and row.event_type == "Deposited" for row in parked.values())
    assert all(row.state is HeldState.PARKED for row in parked.values())
    assert len(totals) == 30
    assert head is not None
    assert await checkpoint(database_url, "totals", "account") == head[0] + 1
