"""`status.collect` on real Postgres, on both stores: exact figures against a known backlog."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import anyio
import pytest

from projector.admin import groups, status
from projector.admin.status import MemberStatus
from projector.errors import InvalidNameError, SchemaMissingError
from projector.model.events import consumer_group_member
from projector.storage import member_locks
from projector.storage.database import connect
from tests.support.projecting import Recorder, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio

WAIT_TIMEOUT = 10.0  # seconds for a runner to commit, or the server to drop a closed session's lock


async def _collect(url: str, group: str | None = None) -> list[MemberStatus]:
    conn = await connect(url)
    async with conn:
        return await status.collect(conn, group=group)


async def _collect_until(
    url: str, done: Callable[[list[MemberStatus]], object]
) -> list[MemberStatus]:
    """Collect until ``done`` holds: checkpoint commits and lock releases come a moment later."""
    with anyio.fail_after(WAIT_TIMEOUT):
        while True:
            rows = await _collect(url)
            if done(rows):
                return rows
            await anyio.sleep(0.05)


async def _server_now(url: str) -> datetime:
    """The server's clock, which event times and lag ages are read from."""
    conn = await connect(url)
    async with conn:
        row = await (await conn.execute("SELECT clock_timestamp()")).fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


async def _messages(url: str, category: str) -> list[tuple[int, str]]:
    """Every (global position, stream name) of a category, read with no help from projector."""
    conn = await connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT global_position, stream_name FROM message_store.messages"
            " WHERE split_part(stream_name, '-', 1) = %s ORDER BY global_position",
            (category,),
        )
        return [(int(position), name) for position, name in await cursor.fetchall()]


async def _set_group(url: str, group: str, size: int, positions: dict[str, list[int]]) -> None:
    """Give a consumer group of ``size`` members checkpoints: positions[category][member]."""
    conn = await connect(url)
    async with conn:
        await conn.set_autocommit(True)
        for category in positions:
            await groups.set_checkpoint(conn, group, category, 1, create=True)
        await groups.rebalance(conn, group, size, dry_run=False)
        for category, members in positions.items():
            for member, position in enumerate(members):
                await groups.set_checkpoint(conn, group, category, position, member=member)


def _figures(rows: list[MemberStatus]) -> list[tuple[object, ...]]:
    return [
        (r.name, r.category, r.checkpoint, r.head, r.lag_events, r.lag_seconds, r.running)
        for r in rows
    ]


async def test_a_plain_group_lags_by_exactly_the_events_written_after_it_caught_up(
    database_url: str,
) -> None:
    await write_events(database_url, {f"account-{i}": 3 for i in range(20)} | {"invoice-1": 5})
    settings = settings_for(database_url, categories=("account",))
    await run_projection(Recorder().projection(), settings)
    head = (await _messages(database_url, "account"))[-1][0]
    [caught_up] = await _collect(database_url)
    assert _figures([caught_up]) == [("recorder", "account", head + 1, head, 0, None, False)]

    before = await _server_now(database_url)
    await write_events(database_url, {f"account-{i}": 2 for i in range(20, 30)})
    await anyio.sleep(0.5)
    # A plain group reads id-less streams too; other categories are not its backlog.
    await write_events(database_url, {"account": 1, "invoice-2": 4, "account-30": 3})
    [behind] = await _collect(database_url)
    elapsed = (await _server_now(database_url) - before).total_seconds()

    new_head = (await _messages(database_url, "account"))[-1][0]
    assert (behind.checkpoint, behind.head, behind.lag_events) == (head + 1, new_head, 24)
    assert behind.lag_seconds is not None
    assert 0.5 <= behind.lag_seconds <= elapsed  # the age of the oldest unhandled event
    assert behind.last_written == caught_up.last_written
    assert not behind.running


async def test_each_consumer_group_member_lags_by_its_own_streams_events_only(
    database_url: str,
) -> None:
    accounts = {f"account-{i}": 1 + i % 4 for i in range(60)}
    compound = {f"account-{i}+card": 2 for i in range(0, 60, 7)}  # partitioned by the cardinal id
    invoices = {f"invoice-{i}": 3 for i in range(10)}
    await write_events(database_url, accounts | compound | invoices | {"account": 3})
    messages = {c: await _messages(database_url, c) for c in ("account", "invoice")}
    account_middle = messages["account"][len(messages["account"]) // 2][0]
    account_head = messages["account"][-1][0]
    positions = {"account": [account_middle, 1, account_head + 1], "invoice": [1, 12, 24]}
    await _set_group(database_url, "balances", 3, positions)

    rows = await _collect(database_url)

    expected = []
    for category, members in positions.items():
        for member, checkpoint in enumerate(members):
            mine = [g for g, s in messages[category] if consumer_group_member(s, 3) == member]
            lag = sum(g >= checkpoint for g in mine)
            expected.append((f"balances-{member}", category, checkpoint, max(mine), lag))
    assert [(r.name, r.category, r.checkpoint, r.head, r.lag_events) for r in rows] == expected
    # Member 1 starts at the beginning, yet its lag is its own streams', not the category's.
    assert 0 < rows[1].lag_events < len(messages["account"]) - 3
    assert rows[2].lag_events == 0
    for row in rows:
        assert (row.lag_seconds is None) == (row.lag_events == 0)
        assert row.lag_seconds is None or row.lag_seconds > 0
        assert (row.size, row.running) == (3, False)


async def test_a_member_shows_running_exactly_while_its_lock_is_held(database_url: str) -> None:
    await write_events(database_url, {f"account-{i}": 2 for i in range(10)})
    await _set_group(database_url, "balances", 3, {"account": [1, 1, 1], "invoice": [1, 1, 1]})

    async with member_locks.MemberLock(database_url, "balances", member=1, size=3) as held:
        await held.acquire(standby=False)
        rows = await _collect(database_url)
        assert [(r.name, r.category, r.running) for r in rows] == [
            ("balances-0", "account", False),
            ("balances-1", "account", True),
            ("balances-2", "account", False),
            ("balances-0", "invoice", False),
            ("balances-1", "invoice", True),
            ("balances-2", "invoice", False),
        ]

    # Closing the session releases the lock, a moment after the client returns.
    await _collect_until(database_url, lambda rows: not any(r.running for r in rows))


async def test_a_running_projection_shows_running_and_stopped_once_it_stops(
    own_store_url: str,
) -> None:
    await write_events(own_store_url, {f"account-{i}": 2 for i in range(10)})
    recorder = Recorder()
    settings = settings_for(own_store_url, categories=("account",), until_caught_up=False)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, recorder.projection(), settings)
        await recorder.wait_until_handled(20)
        [row] = await _collect_until(own_store_url, lambda rows: rows and not rows[0].lag_events)
        assert row.running
        tasks.cancel_scope.cancel()

    await _collect_until(own_store_url, lambda rows: not rows[0].running)


async def test_collect_shows_only_the_group_asked_for(own_store_url: str) -> None:
    await write_events(own_store_url, {f"account-{i}": 1 for i in range(5)})
    await _set_group(own_store_url, "balances", 2, {"account": [1, 3]})
    await _set_group(own_store_url, "reports", 1, {"account": [4]})

    assert [r.name for r in await _collect(own_store_url, "reports")] == ["reports"]
    assert [r.name for r in await _collect(own_store_url, "balances")] == [
        "balances-0",
        "balances-1",
    ]
    assert await _collect(own_store_url, "nobody") == []


async def test_a_member_name_is_refused_as_a_group(own_store_url: str) -> None:
    with pytest.raises(InvalidNameError, match="<group>-<member>"):
        await _collect(own_store_url, "balances-1")


async def test_a_database_without_projector_tables_names_the_command_to_run(
    empty_database_url: str,
) -> None:
    with pytest.raises(SchemaMissingError, match="projector migrate"):
        await _collect(empty_database_url)
