"""Read-your-writes: waiting until a group has handled a given global position."""

from __future__ import annotations

import anyio
import psycopg
import pytest

from projector import WaitTimeoutError, global_position_of, wait_for, write_message
from projector.admin.groups import rebalance, set_checkpoint
from projector.errors import ConfigurationError
from projector.model.events import consumer_group_member
from projector.storage.database import connect
from tests.support.balances import balances_projection, projected_and_folded, write_transactions
from tests.support.projecting import Recorder, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio


async def _write_one(url: str, stream_name: str) -> int:
    """Write one event; return its global position, as a writer would read it back."""
    conn = await connect(url)
    async with conn:
        position = await write_message(conn, stream_name, "Deposited", {"amount": 1})
        await conn.commit()
        return await global_position_of(conn, stream_name, position)


# Longer than any wait here: a wait that returns did so at its first look.
NO_SECOND_LOOK = 3600.0


async def test_returns_at_its_first_look_when_the_position_is_already_handled(
    database_url: str,
) -> None:
    await write_events(database_url, {f"account-{i}": 2 for i in range(10)})
    position = await _write_one(database_url, "account-x")
    await run_projection(
        Recorder().projection(), settings_for(database_url, categories=("account",))
    )

    await wait_for(database_url, "recorder", position, timeout=60, poll=NO_SECOND_LOOK)


async def test_waits_while_a_running_projector_catches_up(database_url: str) -> None:
    await write_events(database_url, {f"account-{i}": 3 for i in range(100)})
    position = await _write_one(database_url, "account-last")
    recorder = Recorder(delay=0.001)
    settings = settings_for(database_url, categories=("account",), until_caught_up=False)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, recorder.projection(), settings)
        await wait_for(database_url, "recorder", position, timeout=30)
        handled_when_done = set(recorder.global_positions)
        tasks.cancel_scope.cancel()

    assert position in handled_when_done


async def test_a_transactional_group_is_waited_for_without_waiting_for_its_checkpoint(
    database_url: str,
) -> None:
    await write_transactions(database_url, accounts=5, events=20, seed=9)
    # A checkpoint committed only at the end: the wait must not need it.
    settings = settings_for(
        database_url, categories=("account",), until_caught_up=False, checkpoint_interval=600
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, balances_projection(), settings)
        position = await _write_one(database_url, "account-new")
        await wait_for(database_url, "balances", position, timeout=60)  # the checkpoint: 600 s
        projected, _ = projected_and_folded(database_url)
        tasks.cancel_scope.cancel()

    assert projected["account-new"] == 1  # the read model already shows the awaited event


async def test_a_consumer_group_waits_for_the_member_that_owns_the_stream(
    own_store_url: str,
) -> None:
    position = await _write_one(own_store_url, "account-42")
    owner = consumer_group_member("account-42", 3)
    async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
        await set_checkpoint(conn, "balances", "account", 1, create=True)
        await rebalance(conn, "balances", 3, dry_run=False)
        for member in {0, 1, 2} - {owner}:
            await set_checkpoint(conn, "balances", "account", position + 1, member=member)

        with pytest.raises(WaitTimeoutError, match="its checkpoint is at 1"):
            await wait_for(own_store_url, "balances", position, timeout=0.3)
        await set_checkpoint(conn, "balances", "account", position + 1, member=owner or 0)

    await wait_for(own_store_url, "balances", position, timeout=60, poll=NO_SECOND_LOOK)


async def test_times_out_with_the_checkpoint_it_saw(own_store_url: str) -> None:
    position = await _write_one(own_store_url, "account-1")

    with pytest.raises(WaitTimeoutError, match="no checkpoint yet"):
        await wait_for(own_store_url, "nobody", position, timeout=0.2)


async def test_a_position_with_no_message_is_refused(own_store_url: str) -> None:
    with pytest.raises(ConfigurationError, match="no message at global position 999"):
        await wait_for(own_store_url, "balances", 999, timeout=0.2)


async def test_a_wait_of_zero_looks_once_and_reports_the_checkpoint_it_saw(
    own_store_url: str,
) -> None:
    position = await _write_one(own_store_url, "account-1")
    async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
        await set_checkpoint(conn, "balances", "account", position, create=True)
        with pytest.raises(WaitTimeoutError, match=f"its checkpoint is at {position}"):
            await wait_for(own_store_url, "balances", position, timeout=0)
        await set_checkpoint(conn, "balances", "account", position + 1)

    await wait_for(own_store_url, "balances", position, timeout=0)


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf")])
async def test_a_timeout_that_is_no_duration_is_refused(own_store_url: str, seconds: float) -> None:
    with pytest.raises(ConfigurationError, match="give 0 to 86,400 seconds"):
        await wait_for(own_store_url, "balances", 1, timeout=seconds)


async def test_a_wait_for_a_category_the_group_does_not_read_is_refused_at_once(
    own_store_url: str,
) -> None:
    position = await _write_one(own_store_url, "invoice-1")
    async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
        await set_checkpoint(conn, "balances", "account", 1, create=True)

    with (
        anyio.fail_after(5),
        pytest.raises(ConfigurationError, match=r"does not read category 'invoice'.*account"),
    ):
        await wait_for(own_store_url, "balances", position, timeout=60)
