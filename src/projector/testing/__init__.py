"""projector's testing kit: a pytest plugin giving each test a database with a message store
(`plugin`), and what proves a projection right, idempotent and deterministic.

    from projector.testing import event, run_until_caught_up

    async def test_deposits_add_up(projector_db):
        await projector_db.write(event("Deposited", stream="account-1", amount=5))
        await run_until_caught_up(balances, projector_db)
        assert await projector_db.snapshot("SELECT * FROM balances") == ...

It sits above the runner, like the CLI, and nothing in projector imports it. Its names are
imported on first use: pytest imports this package (the plugin is in it) in every run, and
most runs never ask for the runner, Alembic or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from projector.testing.snapshots import snapshot

_HOMES = {
    "CaughtUp": "running",
    "Database": "database",
    "Failure": "running",
    "UNWRITTEN": "events",
    "assert_deterministic": "properties",
    "assert_idempotent": "properties",
    "assert_parked": "failures",
    "assert_retried": "failures",
    "call_handler": "running",
    "event": "events",
    "run_until_caught_up": "running",
    "run_with_crash": "running",
    "snapshot": "snapshots",
}
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


def __getattr__(name: str) -> Any:
    """A name of the kit, from its module, imported now. (No module is named after a name it
    exports: importing it would set the package's attribute to the module.)"""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
