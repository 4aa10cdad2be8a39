"""The two properties that break read models in production, checked on a test's database.

- Idempotence (`assert_idempotent`): delivery is at least once, so a handler may be given the
  same events again (after a crash, a rebalance, a checkpoint reset); the read model must not
  change when it is.
- Determinism (`assert_deterministic`): a rebuild from scratch must give the read model the
  live run built, event by event, in however many calls.

A read model is given as a query (compared as a `snapshot` of its rows), or as a function
returning any value to compare, for one kept outside the database.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

from projector.admin.groups import reset_group
from projector.model.events import Event
from projector.model.projection import Projection
from projector.storage import stream_positions
from projector.testing.database import Database, as_database
from projector.testing.running import DEFAULT_WITHIN, run_until_caught_up

ReadModel = LiteralString | Callable[[], Any]
"""A query whose rows are the read model, or a function (plain or async) returning it."""
Clear = LiteralString | Callable[[], Any]
"""A statement that empties the read model, or a function (plain or async) that does."""
DEFAULT_STEPS = 3


async def assert_idempotent(
    projection: Projection,
    events: Sequence[Event],
    read_model: ReadModel,
    *,
    database: Database | str,
    within: float = DEFAULT_WITHIN,
    **settings: Any,
) -> Any:
    """Write ``events``, run ``projection`` until caught up, then deliver them all again (its
    checkpoints reset) and fail unless the read model is the same; return it (a snapshot, for
    a query).

    A transactional projection's positions in ``projector.stream_positions`` are forgotten too,
    or projector would drop every event delivered again before the handler saw it: this checks
    the handler itself. One that adds amounts is exactly once through those positions, and
    not idempotent on its own: `run_with_crash` is its test."""
    db = as_database(database)
    group = settings.get("group") or projection.name
    await db.write(*events)
    await run_until_caught_up(projection, db, within=within, **settings)
    once = await _read(db, read_model)
    await _forget(db, group)
    await run_until_caught_up(projection, db, within=within, **settings)
    twice = await _read(db, read_model)
    if twice != once:
        raise AssertionError(
            f"projection {projection.name!r} is not idempotent: its read model changed when "
            "every event was delivered again\n" + _difference(once, twice, "once", "twice")
        )
    return once


async def assert_deterministic(
    projection: Projection,
    events: Sequence[Event],
    read_model: ReadModel,
    *,
    database: Database | str,
    clear: Clear,
    steps: int = DEFAULT_STEPS,
    within: float = DEFAULT_WITHIN,
    **settings: Any,
) -> Any:
    """Write ``events`` in ``steps`` parts, running ``projection`` until caught up after each
    (the live run); then empty the read model with ``clear``, reset the projection's
    checkpoints (and positions) and run it once over them all (a rebuild from scratch); fail
    unless both read models are the same, and return it."""
    if steps < 1:
        raise ValueError("steps must be 1 or more")
    db = as_database(database)
    group = settings.get("group") or projection.name
    size = -(-len(events) // steps)  # ceiling division: at most `steps` parts
    for start in range(0, max(len(events), 1), max(size, 1)):
        await db.write(*events[start : start + size])
        await run_until_caught_up(projection, db, within=within, **settings)
    live = await _read(db, read_model)
    await _call_or_execute(db, clear)
    await _forget(db, group)
    await run_until_caught_up(projection, db, within=within, **settings)
    rebuilt = await _read(db, read_model)
    if rebuilt != live:
        raise AssertionError(
            f"projection {projection.name!r} is not deterministic: a rebuild from scratch "
            "differs from the live run\n" + _difference(live, rebuilt, "live", "rebuilt")
        )
    return live


async def _forget(db: Database, group: str) -> None:
    """Reset the group's checkpoints and forget its stream positions: every event is delivered,
    and handed to its handler, again."""
    async with db.connect() as conn, conn.transaction():
        await reset_group(conn, group)
        await stream_positions.forget(conn, group)


async def _read(db: Database, read_model: ReadModel) -> Any:
    if isinstance(read_model, str):
        return await db.snapshot(read_model)
    return await _called(read_model)


async def _call_or_execute(db: Database, clear: Clear) -> None:
    if isinstance(clear, str):
        await db.execute(clear)
    else:
        await _called(clear)


async def _called(fn: Callable[[], Any]) -> Any:
    result = fn()
    return await result if inspect.isawaitable(result) else result


def _difference(before: Any, after: Any, before_name: str, after_name: str) -> str:
    old = before if isinstance(before, str) else f"{before!r}\n"
    new = after if isinstance(after, str) else f"{after!r}\n"
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), before_name, after_name
    )
    return "".join(lines)
