"""projector's testing kit: a pytest plugin giving each test a database with a message store
(`plugin`), and what proves a projection right, idempotent and deterministic.

    from projector.testing import event, run_until_caught_up

    async def test_deposits_add_up(projector_db):
        await projector_db.write(event("Deposited", stream="account-1", amount=5))
        await run_until_caught_up(balances, projector_db)
        assert await projector_db.snapshot("SELECT * FROM balances") == ...

It sits above the runner, like the CLI, and nothing in projector imports it.
"""

from projector.testing.database import Database
from projector.testing.events import UNWRITTEN, event
from projector.testing.failures import assert_parked, assert_retried
from projector.testing.properties import assert_deterministic, assert_idempotent
from projector.testing.running import (
    CaughtUp,
    Failure,
    call_handler,
    run_until_caught_up,
    run_with_crash,
)
from projector.testing.snapshot import snapshot

__all__ = [
    "UNWRITTEN",
    "CaughtUp",
    "Database",
    "Failure",
    "assert_deterministic",
    "assert_idempotent",
    "assert_parked",
    "assert_retried",
    "call_handler",
    "event",
    "run_until_caught_up",
    "run_with_crash",
    "snapshot",
]
