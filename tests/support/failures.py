"""Helpers for tests of failing handlers, held (retrying and parked) streams and database
outages."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import sql

from projector import Event, Projection, StreamResult, write_message
from projector.localpg import LocalCluster
from projector.storage.database import connect
from projector.storage.held import HeldState, HeldStream, list_held
from projector.storage.migrate import install_message_store, upgrade


class CeilingJitter(random.Random):
    """A "random" source whose draws are always the top of the range: with it, full-jitter
    backoff waits exactly its ceiling, so the growth of the delays can be measured."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Flaky:
    """A projection that records every call and fails on purpose.

    A stream in ``failing`` raises ``RuntimeError(message)`` on every call. An event in
    ``poison`` (stream, position) cannot be handled: a call handles the events before it and
    returns a partial result, and a call that starts with it raises. A stream in ``slow``
    takes that many seconds per call.
    """

    name: str = "flaky"
    failing: dict[str, str] = field(default_factory=dict)
    poison: set[tuple[str, int]] = field(default_factory=set)
    slow: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, list[int]]] = field(default_factory=list)
    call_times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    handled: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    global_positions: set[int] = field(default_factory=set)
    running: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)

    def projection(self) -> Projection:
        projection = Projection(self.name)

        @projection.handler
        async def handle(stream_name: str, events: list[Event]) -> StreamResult | None:
            if stream_name in self.running:
                self.overlaps.append(stream_name)
            self.running.add(stream_name)
            try:
                await anyio.sleep(self.slow.get(stream_name, 0))
                return self._handle(stream_name, events)
            finally:
                self.running.discard(stream_name)

        return projection

    def _handle(self, stream_name: str, events: list[Event]) -> StreamResult | None:
        self.calls.append((stream_name, [e.position for e in events]))
        self.call_times[stream_name].append(time.monotonic())
        message = self.failing.get(stream_name)
        if message is not None:
            raise RuntimeError(message)
        good = events
        for index, event in enumerate(events):
            if (stream_name, event.position) in self.poison:
                if index == 0:
                    raise RuntimeError(f"cannot handle {stream_name} at {event.position}")
                good = events[:index]
                break
        self.handled[stream_name].extend(e.position for e in good)
        self.global_positions.update(e.global_position for e in good)
        return None if good is events else StreamResult.partially_processed(len(good))

    def first_deliveries(self, stream_name: str) -> list[int]:
        """The stream's positions in the order they were first handled."""
        return list(dict.fromkeys(self.handled[stream_name]))


async def append(url: str, stream_name: str, count: int) -> list[int]:
    """Append ``count`` events to a stream, whatever its version; return their global positions."""
    conn = await connect(url)
    async with conn:
        for _ in range(count):
            await write_message(conn, stream_name, "Counted", {})
        cursor = await conn.execute(
            "SELECT global_position FROM message_store.messages WHERE stream_name = %s"
            " ORDER BY position DESC LIMIT %s",
            (stream_name, count),
        )
        return sorted(int(row[0]) for row in await cursor.fetchall())


async def stream_events(url: str, stream_name: str) -> list[tuple[int, int, str]]:
    """(position, global position, id) of every event of a stream, in order."""
    conn = await connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT position, global_position, id::text FROM message_store.messages"
            " WHERE stream_name = %s ORDER BY position",
            (stream_name,),
        )
        return [(int(p), int(g), str(i)) for p, g, i in await cursor.fetchall()]


async def category_positions(url: str, category: str) -> list[int]:
    conn = await connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT global_position FROM message_store.messages"
            " WHERE message_store.category(stream_name) = %s ORDER BY global_position",
            (category,),
        )
        return [int(row[0]) for row in await cursor.fetchall()]


async def held_streams(url: str, group: str) -> list[HeldStream]:
    """The group's held streams, retrying or parked."""
    conn = await connect(url)
    async with conn:
        return await list_held(conn, group)


async def parked_streams(url: str, group: str) -> list[HeldStream]:
    """The group's parked streams: held, with their attempts used up."""
    return [row for row in await held_streams(url, group) if row.state is HeldState.PARKED]


def contiguous(positions: Sequence[int]) -> bool:
    """Strictly increasing by one: what one handler call of a stream must be given."""
    return all(b == a + 1 for a, b in pairwise(positions))


def message_store_on(cluster: LocalCluster, dbname: str = "shop") -> str:
    """A new database on ``cluster`` with projector's own message store and tables; its URL."""
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = urlunsplit(urlsplit(cluster.url)._replace(path=f"/{dbname}"))
    install_message_store(url)
    upgrade(url)
    return url
