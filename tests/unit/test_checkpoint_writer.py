"""The checkpoint writer with a recording store of checkpoints, no database: it commits only what
moved, and a commit that fails for want of the database is tried again at the next tick."""

from __future__ import annotations

import logging

import anyio
import pytest

from projector.errors import DatabaseUnavailableError
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.storage.checkpoints import Checkpoints
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


class Recorded:
    """Stands for `Checkpoints`: records each commit; fails the next ``failing`` of them."""

    name = "balances-1"

    def __init__(self, failing: int = 0) -> None:
        self.commits: list[dict[str, int]] = []
        self.failing = failing

    async def commit(self, positions: dict[str, int]) -> None:
        if self.failing:
            self.failing -= 1
            raise DatabaseUnavailableError("connection refused")
        self.commits.append(dict(positions))


def writer(recorded: Recorded, interval: float = 0.01) -> CheckpointWriter:
    checkpoints: Checkpoints = recorded  # type: ignore[assignment]
    return CheckpointWriter(checkpoints, interval=interval)


async def test_a_flush_commits_only_the_categories_that_moved() -> None:
    recorded = Recorded()
    positions = writer(recorded)
    positions.start_at("account", 10)
    positions.start_at("order", 5)

    positions.advance("account", 20)
    await positions.flush()
    await positions.flush()  # nothing moved since

    assert recorded.commits == [{"account": 20}]
    assert positions.committed == {"account": 20, "order": 5}
    assert positions.completed == {"account": 20, "order": 5}


async def test_a_failed_commit_is_logged_and_made_at_the_next_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = Recorded(failing=1)
    positions = writer(recorded)
    positions.start_at("account", 1)
    positions.advance("account", 7)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(positions.run)
            await eventually(lambda: bool(recorded.commits), within=5)
            tasks.cancel_scope.cancel()

    assert recorded.commits == [{"account": 7}]
    failed = [r for r in caplog.records if getattr(r, "action", None) == "checkpoint_commit_failed"]
    assert [r.levelno for r in failed] == [logging.WARNING]
