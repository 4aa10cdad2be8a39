"""projector's own reads of the message store through its pool (`MessageStore`): a category
read in batches, where the next read starts, and stream reads, against the store's functions."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from projector.model.share import Share
from projector.storage import database
from projector.storage.message_store import MessageStore

pytestmark = pytest.mark.anyio


def _write(url: str, names: list[str]) -> None:
    with psycopg.connect(url, autocommit=True, options="-c search_path=message_store,public") as c:
        for i, name in enumerate(names):
            c.execute(
                "SELECT write_message(%s, %s, 'Deposited', %s::jsonb)",
                (str(uuid.uuid4()), name, json.dumps({"amount": i})),
            )


def _head(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT max(global_position) FROM message_store.messages").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_category_read_in_batches_gives_every_event_once_in_global_order(
    database_url: str,
) -> None:
    _write(database_url, [f"account-{i % 4}" if i % 3 else f"other-{i}" for i in range(30)])
    async with database.open_pool(database_url, max_size=2) as pool:
        store = MessageStore(pool)
        position, seen, reads = 1, [], 0
        while (read := await store.read_category("account", position, 7)).found:
            events = await read.load()
            assert read.resume_at == events[-1].global_position + 1
            seen += events
            position, reads = read.resume_at, reads + 1
        last = await read.load()

    assert last == []
    assert read.resume_at == position
    assert reads == 3  # 20 events: 7, 7, 6
    assert [e.global_position for e in seen] == sorted({e.global_position for e in seen})
    assert [e.data["amount"] for e in seen] == [i for i in range(30) if i % 3]
    assert {e.stream_name for e in seen} == {f"account-{i}" for i in range(4)}


async def test_a_members_read_moves_past_other_members_rows_even_when_it_finds_none(
    database_url: str,
) -> None:
    # A stream of each member of two: member 1 reads only its own.
    share = Share(2, frozenset({1}))
    candidates = [f"account-{i}" for i in range(10)]
    mine = next(n for n in candidates if share.owns(n))
    other = next(n for n in candidates if not share.owns(n))
    _write(database_url, [other] * 3 + [mine])
    async with database.open_pool(database_url, max_size=2) as pool:
        store = MessageStore(pool, share)
        first = await store.read_category("account", 1, 2)
        events = await first.load()
        after = await store.read_category("account", first.resume_at, 2)

    assert [e.stream_name for e in events] == [mine]
    assert first.resume_at == _head(database_url) + 1  # past the other member's events, too
    assert not after.found
    assert await after.load() == []
    assert after.resume_at == first.resume_at


async def test_a_stream_read_starts_at_a_position_and_past_the_end_is_empty(
    database_url: str,
) -> None:
    _write(database_url, ["account-1"] * 5)
    async with database.open_pool(database_url, max_size=1) as pool:
        store = MessageStore(pool)
        some = await store.read_stream("account-1", 2, 2)
        past_the_end = await store.read_stream("account-1", 5, 10)
        missing = await store.read_stream("account-9", 0, 10)

    assert [(e.position, e.data) for e in some] == [(2, {"amount": 2}), (3, {"amount": 3})]
    assert past_the_end == []
    assert missing == []
