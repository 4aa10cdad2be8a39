"""How a runner holds its streams: the one seam between a fixed group's member and an elastic
group's member.

A runner projects in tenures. A tenure begins once the runner holds the right to its share of
the streams (a fixed member's lock, or an elastic member's leased buckets), and ends when the
run ends, when that right is lost (the lock's session ended, a bucket was taken or its lease
ran out), or, in an elastic group, when a rebalance asks it to hand its buckets over. The
runner starts tenure after tenure without knowing which kind it holds: each `Tenancy` says
what its tenures project with (`Term`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

import anyio

from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.storage.database import Connection
from projector.storage.held import HeldStreams
from projector.storage.message_store import MessageStore
from projector.telemetry.run_telemetry import RunTelemetry


class Lease(Protocol):
    """The right to project a share of the streams: a member's lock, or leased buckets."""

    @property
    def connection(self) -> Connection: ...

    async def until_lost(self) -> None:
        """Return never; raise LeaseLostError once the right is lost."""
        ...


@dataclass(frozen=True, slots=True)
class Term:
    """What one tenure projects with: a reader of its share of the streams (``store.share``),
    the checkpoints of that share, the lease it holds, and its share's held streams.
    ``ending`` is set when the tenure should end gracefully (an elastic rebalance: stop
    reading, drain, commit, hand over); None where nothing asks that."""

    store: MessageStore
    writer: CheckpointWriter
    lease: Lease
    held: HeldStreams
    ending: anyio.Event | None = None


class Tenancy(Protocol):
    """A runner's way of holding its streams, from one tenure to the next."""

    @property
    def name(self) -> str:
        """Whose checkpoints the run writes, for logs and metrics: ``<group>`` or
        ``<group>-<member>``."""
        ...

    def joined(self, telemetry: RunTelemetry) -> AbstractAsyncContextManager[None]:
        """What comes before the first tenure and lasts for the block: the run's."""
        ...

    def tenure(self, connected: Callable[[], None]) -> AbstractAsyncContextManager[Term]:
        """One tenure, for the block: take the right to project (waiting as a standby, where
        that applies), call ``connected()`` once the database answered, and settle where each
        category starts; leaving releases what it holds. Nothing is handled on entry, so all
        of it can be done again: DatabaseUnavailableError when the database goes away
        meanwhile."""
        ...
