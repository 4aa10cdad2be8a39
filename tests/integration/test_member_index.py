"""The opt-in member index on real Postgres, on both stores: members read the same events with
it as without it (only through it), installing it is idempotent and repairs a failed build, and
a running member says which way it reads."""

from __future__ import annotations

import logging

import anyio
import psycopg
import pytest

from projector.model.events import consumer_group_member
from projector.model.share import Share
from projector.storage import database, member_index
from projector.storage.database import SESSION_SETTINGS
from projector.storage.message_store import MessageStore, read_member
from tests.support.groups import CATEGORY, run_members
from tests.support.projecting import Recorder, write_events

pytestmark = pytest.mark.anyio

SIZE = 3


def _streams() -> dict[str, int]:
    streams = {f"{CATEGORY}-{i}": 1 + i % 3 for i in range(60)}
    # Compound ids share their cardinal id's member; a bare category name belongs to none.
    streams |= {f"{CATEGORY}-7+{suffix}": 2 for suffix in ("a", "b", "c")}
    return streams | {CATEGORY: 2}


async def _member_reads(url: str, member: int) -> list[tuple[str, int, int]]:
    """Everything one member reads, in small batches, as (stream, position, global position)."""
    found: list[tuple[str, int, int]] = []
    async with database.open_pool(url, max_size=1) as pool:
        store = MessageStore(pool, Share.member(member, SIZE))
        position = 1
        while True:
            read = await store.read_category(CATEGORY, position, 7)
            found += [(e.stream_name, e.position, e.global_position) for e in await read.load()]
            if read.resume_at == position:
                return found
            position = read.resume_at


def _plan(url: str) -> str:
    """The member read's plan, with sequential scans off so that the table's size does not
    decide between the two indexes that could serve it."""
    params = {"category": CATEGORY, "position": 1, "batch_size": 7, "member": 1}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SESSION_SETTINGS)
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute(f"EXPLAIN {read_member(SIZE)}", params).fetchall()
    return "\n".join(row[0] for row in rows)


async def test_members_read_the_same_events_through_the_index_as_without_it(
    database_url: str,
) -> None:
    await write_events(database_url, _streams())
    without = [await _member_reads(database_url, member) for member in range(SIZE)]
    assert "projector_member_3" not in _plan(database_url)

    assert member_index.install(database_url, SIZE) is True

    assert "Index Cond" in _plan(database_url)
    assert "projector_member_3" in _plan(database_url)
    with_index = [await _member_reads(database_url, member) for member in range(SIZE)]
    assert with_index == without
    for member, reads in enumerate(with_index):
        assert {consumer_group_member(stream, SIZE) for stream, _, _ in reads} == {member}
    written = sum(_streams().values()) - _streams()[CATEGORY]
    assert sum(map(len, with_index)) == written


def test_installing_twice_builds_once_and_an_interrupted_build_is_replaced(
    own_store_url: str,
) -> None:
    with psycopg.connect(own_store_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO message_store.messages (stream_name, position, type, data)"
            " VALUES ('account-1', 0, 'Opened', '{}'), ('account-2', 0, 'Opened', '{}')"
        )
        # What a build that failed half way leaves: an invalid index under the same name.
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "CREATE UNIQUE INDEX CONCURRENTLY projector_member_3 ON message_store.messages"
                " (message_store.category(stream_name))"
            )

    assert member_index.install(own_store_url, SIZE) is True
    assert member_index.install(own_store_url, SIZE) is False

    with psycopg.connect(own_store_url) as conn:
        definition = conn.execute(
            "SELECT pg_get_indexdef('message_store.projector_member_3'::regclass)"
        ).fetchone()
    assert definition is not None
    assert "md5" in definition[0]
    assert "UNIQUE" not in definition[0]


async def test_a_member_says_whether_it_reads_through_its_member_index(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    await write_events(own_store_url, {f"{CATEGORY}-{i}": 2 for i in range(10)})

    def actions() -> list[str]:
        found = [r.__dict__.get("action", "") for r in caplog.records]
        return [action for action in found if action.startswith("member_index_")]

    with anyio.fail_after(20):
        await run_members(own_store_url, {0: Recorder()}, size=SIZE)
    assert actions() == ["member_index_missing"]

    member_index.install(own_store_url, SIZE)
    caplog.clear()
    with anyio.fail_after(20):
        await run_members(own_store_url, {1: Recorder()}, size=SIZE)
    assert actions() == ["member_index_used"]
