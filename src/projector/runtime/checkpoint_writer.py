"""The checkpoint writer: commits, every ``checkpoint_interval``, the positions the sink's
in-order batch completions reached.

It only ever learns of a position from those completions (`advance`), so it can never pass an
unfinished batch.
"""

from __future__ import annotations

import logging
from typing import Protocol

import anyio

from projector import cleanup
from projector.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)


class CommitsCheckpoints(Protocol):
    """Where a writer commits: a member's `Checkpoints`, or an elastic tenure's buckets."""

    @property
    def name(self) -> str: ...

    async def commit(self, positions: dict[str, int]) -> None: ...


class CheckpointWriter:
    """Commits positions as batches complete: every ``interval`` seconds when one moved, and on
    ``flush``."""

    def __init__(self, checkpoints: CommitsCheckpoints, *, interval: float) -> None:
        self._checkpoints = checkpoints
        self._interval = interval
        self._completed: dict[str, int] = {}
        self._committed: dict[str, int] = {}

    def start_at(self, category: str, position: int) -> None:
        """The position a category starts from, already committed or about to be."""
        self._completed[category] = position
        self._committed[category] = position

    def advance(self, category: str, position: int) -> None:
        """Record that every event of ``category`` below ``position`` is handled."""
        self._completed[category] = position

    @property
    def name(self) -> str:
        """The checkpoints' owner: ``<group>`` or ``<group>-<member>``."""
        return self._checkpoints.name

    @property
    def committed(self) -> dict[str, int]:
        """The positions last committed (or loaded at start), per category."""
        return dict(self._committed)

    @property
    def completed(self) -> dict[str, int]:
        return dict(self._completed)

    async def run(self) -> None:
        """Commit on the interval, forever; cancel to stop (then call ``flush``).

        A commit that fails because the database is away is logged and tried again at the next
        tick: the positions stay in memory, and the sources decide when an outage is too long.
        """
        while True:
            await anyio.sleep(self._interval)
            try:
                # Shielded: cancelling a commit in flight makes psycopg close the connection,
                # and the stopping runner's last commit needs that connection.
                with cleanup.shielded("a checkpoint commit", cleanup.FINAL_FLUSH):
                    await self.flush()
            except DatabaseUnavailableError as exc:
                logger.warning(
                    "checkpoint commit failed, retrying in %g s: %s",
                    self._interval,
                    exc,
                    extra={"action": "checkpoint_commit_failed", "group": self.name},
                )

    async def flush(self) -> None:
        """Commit every position that moved since the last commit."""
        moved = {c: p for c, p in self._completed.items() if self._committed.get(c) != p}
        if not moved:
            return
        await self._checkpoints.commit(moved)
        self._committed.update(moved)
        for category, position in moved.items():
            logger.info(
                "checkpoint %s/%s committed at %d",
                self._checkpoints.name,
                category,
                position,
                extra={
                    "action": "checkpoint_committed",
                    "group": self._checkpoints.name,
                    "category": category,
                    "position": position,
                },
            )
