"""Helpers for tests that write events and run projections in-process against real Postgres."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg

from projector import Event, Projection, write_message
from projector.runner import Runner
from projector.settings import Settings
from projector.storage.database import connect


def settings_for(url: str, **overrides: Any) -> Settings:
    """Settings for a test run: fast intervals, no .env from the working directory."""
    values: dict[str, Any] = {
        "database_url": url,
        "tail_sleep": 0.02,
        "checkpoint_interval": 0.05,
        "until_caught_up": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def write_events(url: str, streams: dict[str, int], *, writers: int = 4) -> None:
    """Append ``count`` events to each stream with write_message, from concurrent writers.

    Each stream's events are written by one writer in order (with expected versions), while
    the writers interleave streams and categories freely.
    """
    order = [name for name, count in streams.items() for _ in range(count)]
    random.Random(len(order)).shuffle(order)
    shares: list[list[str]] = [[] for _ in range(writers)]
    for name in order:
        shares[hash(name) % writers].append(name)

    async def write(share: list[str]) -> None:
        conn = await connect(url)
        async with conn:
            versions: dict[str, int] = defaultdict(lambda: -1)
            for chunk in _chunks(share, 50):
                async with conn.transaction():
                    # write_message locks each category for the rest of the transaction:
                    # taking them in one order keeps concurrent writers from deadlocking.
                    for name in sorted(chunk, key=lambda n: n.partition("-")[0]):
                        version = versions[name]
                        await write_message(
                            conn, name, "Counted", {"n": version + 1}, expected_version=version
                        )
                        versions[name] = version + 1

    async with anyio.create_task_group() as tasks:
        for share in shares:
            tasks.start_soon(write, share)


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class Recorder:
    """A projection that records every call, and checks one-call-per-stream as it goes."""

    name: str = "recorder"
    delay: float = 0.0
    calls: list[tuple[str, list[int]]] = field(default_factory=list)
    positions: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    global_positions: list[int] = field(default_factory=list)
    last_global_position: dict[str, int] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    _progress: anyio.Event = field(default_factory=anyio.Event)

    def projection(self) -> Projection:
        projection = Projection(self.name)

        @projection.handler
        async def handle(stream_name: str, events: list[Event]) -> None:
            if stream_name in self.running:
                self.overlaps.append(stream_name)
            self.running.add(stream_name)
            try:
                if self.delay:
                    await anyio.sleep(self.delay)
                self.calls.append((stream_name, [e.position for e in events]))
                self.positions[stream_name].extend(e.position for e in events)
                self.global_positions.extend(e.global_position for e in events)
                category = events[0].category
                last = max(self.last_global_position.get(category, 0), events[-1].global_position)
                self.last_global_position[category] = last
                self._progress.set()
            finally:
                self.running.discard(stream_name)

        return projection

    @property
    def handled(self) -> int:
        """How many events calls were given, redeliveries included."""
        return len(self.global_positions)

    def delivered(self) -> set[tuple[str, int]]:
        """Every (stream, position) given to a call, once."""
        return {(name, p) for name, positions in self.positions.items() for p in positions}

    def redelivered(self) -> list[tuple[str, int]]:
        """The (stream, position) pairs given to more than one call (or twice to one)."""
        return sorted(
            (name, p)
            for name, positions in self.positions.items()
            for p, count in Counter(positions).items()
            if count > 1
        )

    async def wait_until_handled(self, count: int) -> None:
        while self.handled < count:
            self._progress = anyio.Event()
            await self._progress.wait()


async def stored_events(url: str, category: str | None = None) -> set[tuple[str, int]]:
    """Every event in message_store.messages (of ``category``), as (stream, position): what a
    group that handled everything was given, each pair at least once."""
    conn = await connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT stream_name, position FROM message_store.messages"
            " WHERE %(category)s::text IS NULL"
            " OR message_store.category(stream_name) = %(category)s",
            {"category": category},
        )
        return {(str(name), int(position)) for name, position in await cursor.fetchall()}


async def run_projection(projection: Projection, settings: Settings) -> None:
    await Runner(projection, settings).run()


async def checkpoint(url: str, group: str, category: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (
            await conn.execute(
                "SELECT position FROM projector.checkpoints"
                " WHERE checkpoint_name = %s AND category = %s",
                (group, category),
            )
        ).fetchone()
    return None if row is None else int(row[0])
