"""Transactional projections apply each event exactly once, however often it is delivered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import psycopg
import pytest

from projector import Event, Projection, StreamResult
from projector.admin.groups import rebalance, reset_group, set_checkpoint
from projector.errors import ConfigurationError
from projector.model.projection import idempotency_key
from projector.storage import database
from projector.storage.database import Connection
from projector.storage.stream_positions import NO_ROW, Session
from tests.support.balances import balances_projection, projected_and_folded, write_transactions
from tests.support.groups import run_members
from tests.support.projecting import run_projection, settings_for
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def _run_balances(url: str, size: int) -> None:
    await run_members(url, {m: balances_projection() for m in range(size)}, size=size)


async def test_balances_equal_the_fold_after_redelivery_a_rebalance_and_a_reset(
    database_url: str,
) -> None:
    await write_transactions(database_url, accounts=40, events=600, seed=1)
    await _run_balances(database_url, 3)
    await write_transactions(database_url, accounts=40, events=300, seed=2)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        # Member 0 back to the start: the rebalance takes the lowest checkpoint, so every
        # event is delivered again to the two new members.
        await set_checkpoint(conn, "balances", "account", 1, member=0)
        plan = await rebalance(conn, "balances", 2, dry_run=False)
    assert plan.positions == {"account": 1}
    await _run_balances(database_url, 2)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await reset_group(conn, "balances")
    await _run_balances(database_url, 1)

    projected, folded = projected_and_folded(database_url)
    assert projected == folded
    assert len(projected) == 40


async def test_a_span_of_already_applied_events_never_reaches_the_handler(
    own_store_url: str,
) -> None:
    await write_transactions(own_store_url, accounts=5, events=50, seed=3)
    calls: list[tuple[str, list[int]]] = []
    projection = Projection("counting")

    @projection.transactional
    async def record(stream_name: str, events: list[Event], conn: Connection) -> None:
        calls.append((stream_name, [e.position for e in events]))

    await run_projection(projection, settings_for(own_store_url, categories=("account",)))
    first = len(calls)
    async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
        await reset_group(conn, "counting")
    await run_projection(projection, settings_for(own_store_url, categories=("account",)))

    assert first > 0
    assert len(calls) == first, "a replay after a reset called the handler again"


def _first_calls_misbehave(
    name: str, misbehave: Callable[[], Awaitable[StreamResult | None]]
) -> tuple[Projection, set[str]]:
    """The balances projection, whose first call of each stream writes its balance, then
    ``misbehave``s; and the streams that did."""
    projection = balances_projection(name)
    real = projection._transactional_handler
    assert real is not None
    misbehaved: set[str] = set()

    async def handler(
        stream_name: str, events: list[Event], conn: Connection
    ) -> StreamResult | None:
        await real(stream_name, events, conn)
        if stream_name in misbehaved:
            return None
        misbehaved.add(stream_name)
        return await misbehave()

    projection._transactional_handler = handler
    return projection, misbehaved


async def test_a_failed_transactional_call_rolls_back_its_writes_and_its_position(
    own_store_url: str,
) -> None:
    await write_transactions(own_store_url, accounts=3, events=30, seed=4)

    async def fail() -> None:
        raise RuntimeError("after writing")

    projection, failed = _first_calls_misbehave("flaky_balances", fail)
    await run_projection(
        projection, settings_for(own_store_url, categories=("account",), retry_base=0.01)
    )

    projected, folded = projected_and_folded(own_store_url)
    assert projected == folded
    assert failed == set(folded)


async def test_a_call_that_handled_none_of_its_events_keeps_none_of_its_writes(
    own_store_url: str,
) -> None:
    await write_transactions(own_store_url, accounts=3, events=30, seed=5)

    async def decline() -> StreamResult:
        return StreamResult.none_processed()

    projection, declined = _first_calls_misbehave("hesitant_balances", decline)
    await run_projection(projection, settings_for(own_store_url, categories=("account",)))

    projected, folded = projected_and_folded(own_store_url)
    assert projected == folded
    assert declined == set(folded)


async def test_a_call_cut_short_by_the_handler_timeout_is_rolled_back_and_retried(
    own_store_url: str,
) -> None:
    await write_transactions(own_store_url, accounts=3, events=30, seed=6)

    async def stall() -> None:
        await anyio.sleep(5)  # cancelled by the timeout

    projection, stalled = _first_calls_misbehave("slow_balances", stall)
    settings = settings_for(
        own_store_url, categories=("account",), handler_timeout=0.3, retry_base=0.01
    )
    with anyio.fail_after(30):
        await run_projection(projection, settings)

    projected, folded = projected_and_folded(own_store_url)
    assert projected == folded
    assert stalled == set(folded)


async def test_no_connection_stays_idle_in_a_transaction_once_caught_up(
    own_store_url: str,
) -> None:
    await write_transactions(own_store_url, accounts=5, events=50, seed=7)
    settings = settings_for(own_store_url, categories=("account",), until_caught_up=False)

    async def lingering() -> int:
        async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
            row = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state = 'idle in transaction'"
                )
            ).fetchone()
        assert row is not None
        return int(row[0])

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, balances_projection(), settings)
        await eventually(lambda: _balances_match(own_store_url), within=20)
        await eventually(lambda: _none(lingering), within=10)
        # The connections went back to the pool; new events are still projected.
        await write_transactions(own_store_url, accounts=5, events=20, seed=8)
        await eventually(lambda: _balances_match(own_store_url), within=20)
        tasks.cancel_scope.cancel()


def _balances_match(url: str) -> bool:
    projected, folded = projected_and_folded(url)
    return projected == folded


async def _none(count: Callable[[], Awaitable[int]]) -> bool:
    return await count() == 0


def test_a_projection_has_one_kind_of_handler() -> None:
    projection = balances_projection()

    with pytest.raises(ConfigurationError, match="already has handlers"):

        @projection.handler
        async def other(stream_name: str, events: list[Event]) -> None: ...


def test_idempotency_keys_are_stable_per_group_and_event() -> None:
    event = Event(
        7, 0, None, "account-1", "Deposited", "{}", None, "8c4d2f0e-9b1a-4f3e-8a55-2f6b1c7d9e01"  # type: ignore[arg-type]
    )
    again = Event(
        7, 0, None, "account-1", "Deposited", "{}", None, "8c4d2f0e-9b1a-4f3e-8a55-2f6b1c7d9e01"  # type: ignore[arg-type]
    )

    assert idempotency_key("balances", event) == idempotency_key("balances", again)
    assert idempotency_key("balances", event) != idempotency_key("reports", event)


async def test_recording_a_batch_of_positions_again_updates_every_row_on_its_own_page(
    own_store_url: str, own_store_conn: Connection
) -> None:
    """Every call rewrites its streams' rows: with room on their pages (the table's
    fillfactor), those updates are HOT, adding no index entry for vacuum to clean up."""
    names = [f"account-{i}" for i in range(200)]
    conn = await database.connect(own_store_url)
    await conn.set_autocommit(True)
    async with conn:
        await conn.execute(b"BEGIN")
        session = Session(conn)
        await session.record_all_and_commit(
            "hot", dict.fromkeys(names, 0), expected=dict.fromkeys(names, NO_ROW)
        )
        await session.record_all_and_commit(
            "hot", dict.fromkeys(names, 1), expected=dict.fromkeys(names, 0)
        )
        await session.discard()

    async def updates() -> tuple[int, int]:
        row = await (await own_store_conn.execute(UPDATES_OF_POSITIONS)).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async def counted() -> bool:
        return (await updates())[0] >= len(names)  # statistics reach other sessions late

    await eventually(counted, within=15)
    assert await updates() == (len(names), len(names))


UPDATES_OF_POSITIONS = b"""
SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
WHERE schemaname = 'projector' AND relname = 'stream_positions'
"""
