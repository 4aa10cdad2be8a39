"""The balances projection, tested with projector's testing kit only: `pytest` in this folder
(or `pytest examples/accounts` from the repository)."""

from __future__ import annotations

import pytest

from projections import balances
from projector import Event
from projector.testing import (
    Database,
    assert_deterministic,
    assert_idempotent,
    call_handler,
    event,
    run_until_caught_up,
    run_with_crash,
)

pytestmark = pytest.mark.anyio

BALANCES = "SELECT account_id, balance, deposits, withdrawals FROM account_balances"


def history() -> list[Event]:
    """Four new events (an event is written once: its id is the message's)."""
    return [
        event("Deposited", stream="account-1", amount=100),
        event("Withdrawn", stream="account-1", amount=30),
        event("Deposited", stream="account-2", amount=5),
        event("Deposited", stream="account-1", amount=7),
    ]


async def test_deposits_and_withdrawals_add_up_per_account(projector_db: Database) -> None:
    await projector_db.write(*history())

    await run_until_caught_up(balances, projector_db)

    assert await projector_db.snapshot(BALANCES) == (
        "account_id | balance | deposits | withdrawals\n"
        "1          | 77      | 2        | 1\n"
        "2          | 5       | 1        | 0\n"
    )


async def test_a_crash_before_the_checkpoint_changes_no_balance(projector_db: Database) -> None:
    await projector_db.write(*history()[:2])
    await run_until_caught_up(balances, projector_db)
    await projector_db.write(*history()[2:])

    await run_with_crash(balances, projector_db)  # the last two events are delivered twice

    assert await projector_db.snapshot("SELECT account_id, balance FROM account_balances") == (
        "account_id | balance\n1          | 77\n2          | 5\n"
    )


async def test_a_rebuild_gives_the_balances_the_live_run_built(projector_db: Database) -> None:
    await assert_deterministic(
        balances,
        history(),
        BALANCES,
        database=projector_db,
        clear="TRUNCATE account_balances",
    )


async def test_the_handler_adds_so_exactly_once_rests_on_projectors_positions(
    projector_db: Database,
) -> None:
    # Given every event again with its positions forgotten, the handler adds them again: it is
    # right only because projector records each stream's position in the same transaction.
    with pytest.raises(AssertionError, match="is not idempotent"):
        await assert_idempotent(balances, history(), BALANCES, database=projector_db)


async def test_a_withdrawal_is_subtracted(projector_db: Database) -> None:
    async with projector_db.connect() as conn:
        await call_handler(
            balances,
            [
                event("Deposited", stream="account-9", amount=10),
                event("Withdrawn", stream="account-9", amount=4),
            ],
            conn=conn,
        )

    assert await projector_db.rows(BALANCES) == [
        {"account_id": "9", "balance": 6, "deposits": 1, "withdrawals": 1}
    ]
