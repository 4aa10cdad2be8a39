"""Held streams' replays: a held stream is replayed from the stream itself, in order, from its
first unhandled event, when its next attempt is due (or an operator asks), and rejoins the live
flow at the stream's end; a replay that fails again goes back to `FailureDecisions`. A held
stream costs a row write when it fails, and a delete when it rejoins; nothing in memory grows
with its events.

What the last look saw is also what telemetry reports of the held streams (`held`,
`troubled`), and what a catch-up waits on (`settled`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import anyio

from projector.errors import DatabaseUnavailableError
from projector.model.events import Event
from projector.pipeline.calls import SpanHandler
from projector.pipeline.sink import StreamsSink
from projector.pipeline.streams import TroubledStream
from projector.runtime.failure_decisions import FailureDecisions
from projector.runtime.outage import Outage, is_connection_error
from projector.storage.held import HeldState, HeldStream, HeldStreams, Look
from projector.storage.message_store import MessageStore

logger = logging.getLogger(__name__)

LOOK_EVERY = 2.0  # seconds between looks for due attempts and operators' retry requests


@dataclass
class _Progress:
    position: int  # the first stream position not yet handled
    failing: Event | None = None  # the first event of the call that failed


@dataclass(frozen=True, slots=True)
class HeldCount:
    """The held streams of one state that a runner owns, as of its last look."""

    streams: int
    oldest_seconds: float | None  # since the oldest was first held
    next_attempt_seconds: float | None  # until the next attempt (retrying streams)


class Replays:
    """Replays a runner's held streams as they come due (`serve`)."""

    def __init__(
        self,
        held: HeldStreams,
        store: MessageStore,
        handle: SpanHandler,
        outage: Outage,
        decisions: FailureDecisions,
        *,
        group: str,
        batch_size: int,
        handler_timeout: float | None,
    ) -> None:
        self._held = held
        self._store = store
        self._handle = handle
        self._outage = outage
        self._decisions = decisions
        self._group = group
        self._batch_size = batch_size
        self._handler_timeout = handler_timeout
        self._looked = anyio.Event()  # set after each round of `serve`, then replaced
        self._last: tuple[Look, float] | None = None  # the last look, and its anyio time
        # Streams replayed and back in the live flow whose row's release failed, with the
        # row's failed_at: the row is only to be deleted when met again.
        self._unreleased: dict[str, datetime] = {}

    async def serve(self, sink: StreamsSink) -> None:
        """Replay held streams as their attempts come due or an operator asks for it (what is
        due already at once, when a runner starts); cancel to stop."""
        while True:
            changed = self._decisions.rearm()
            try:
                look = await self._held.look()
            except DatabaseUnavailableError as exc:
                await self._wait_for_database(exc)
                continue
            self._last = look, anyio.current_time()
            due = look.due()
            for held in due:
                try:
                    await self.replay(held, sink)
                except DatabaseUnavailableError as exc:
                    await self._wait_for_database(exc)
                    break
            self._looked.set()
            self._looked = anyio.Event()
            if due:
                continue  # the replays moved the rows: look again at once
            wait = look.seconds_to_next()
            with anyio.move_on_after(LOOK_EVERY if wait is None else min(wait, LOOK_EVERY)):
                await changed.wait()

    async def _wait_for_database(self, error: DatabaseUnavailableError) -> None:
        logger.warning(
            "held streams wait for the database: %s",
            error,
            extra={"action": "reconnecting", "doing": "replaying held streams"},
        )
        if await self._outage.confirm():
            await self._outage.wait_until_back()
        else:
            await anyio.sleep(LOOK_EVERY)

    async def replay(self, held: HeldStream, sink: StreamsSink) -> None:
        """Replay one held stream from its row's position to the stream's end, where it
        rejoins the live flow; a failure holds it again where it failed."""
        name = held.stream_name
        if name not in sink.held_streams:
            if self._unreleased.get(name) == held.failed_at:
                # This runner replayed it already, and only the row's release failed.
                await self._held.release(held)
                del self._unreleased[name]
                return
            # The sink runs it: an operator asked for it to be delivered again (`projector
            # replay`, whose row has a failed_at of its own). Out of the read path first,
            # once no call of it runs, so that the replay's calls never run beside the sink's.
            await sink.take_out(name)
        progress = _Progress(held.position)
        try:
            await self._replay_from(name, progress, sink)
        except Exception as error:
            sink.hold(name)  # out of the read path again; the row still holds its place
            if isinstance(error, DatabaseUnavailableError):
                raise
            if is_connection_error(error):
                raise DatabaseUnavailableError(f"replaying {name}: {error}") from error
            await self._decisions.failed_again(held, progress.failing, error)
            return
        sink.rejoin(name, progress.position)
        self._unreleased[name] = held.failed_at  # until its row is gone
        await self._held.release(held)
        del self._unreleased[name]
        logger.info(
            "%s replayed up to position %d and back in the live flow",
            name,
            progress.position - 1,
            extra={
                "action": "stream_rejoined",
                "group": self._group,
                "stream": name,
                "position": progress.position,
                "state": held.state.value,
                "attempts": held.attempts,
            },
        )

    async def _replay_from(self, stream_name: str, progress: _Progress, sink: StreamsSink) -> None:
        """Handle the stream's events from ``progress.position`` on, moving it as calls succeed
        (so that a failure records the first event still unhandled).

        While the replay is far from the stream's end, the sink goes on dropping the stream's
        events: the replay reads them. Once a read comes back short, the sink keeps what the
        source reads of the stream from then on (`rejoining`), and the replay reads on until a
        read made after that finds nothing more: every event the sink dropped was written
        before that read, so none is missed, and the sink's buffer holds at most what was
        written during the replay's last reads."""
        rejoining = False
        while True:
            events = await self._store.read_stream(
                stream_name, progress.position, self._batch_size
            )
            if rejoining and not events:
                return
            if not rejoining and len(events) < self._batch_size:
                sink.rejoining(stream_name)
                rejoining = True
                if not events:
                    continue
            progress.failing = events[0]
            with anyio.fail_after(self._handler_timeout):
                next_position = await self._handle(stream_name, events)
            if next_position <= progress.position:
                raise RuntimeError("the handler handled none of the replayed events")
            progress.position, progress.failing = next_position, None

    def held(self, state: HeldState) -> HeldCount:
        """This runner's held streams in ``state``, as of its last look (every few seconds)."""
        streams, look, since = self._as_last_seen(state)
        if look is None:
            return HeldCount(0, None, None)
        ages = [(look.now - held.held_at).total_seconds() + since for held in streams]
        attempts = [
            (held.next_attempt_at - look.now).total_seconds() - since
            for held in streams
            if held.next_attempt_at is not None
        ]
        return HeldCount(
            len(streams),
            max(ages, default=None),
            max(min(attempts), 0.0) if attempts else None,
        )

    def troubled(self, *, longer_than: float) -> list[TroubledStream]:
        """Streams retrying for more than ``longer_than`` seconds, as of the last look."""
        streams, look, since = self._as_last_seen(HeldState.RETRYING)
        if look is None:
            return []
        found = []
        for held in streams:
            seconds = (look.now - held.held_at).total_seconds() + since
            if seconds > longer_than:
                found.append(TroubledStream(held.stream_name, "retrying", seconds, held.attempts))
        return found

    def _as_last_seen(self, state: HeldState) -> tuple[list[HeldStream], Look | None, float]:
        """The streams in ``state`` at the last look, that look, and the seconds since it."""
        if self._last is None:
            return [], None, 0.0
        look, looked_at = self._last
        streams = [held for held in look.streams if held.state is state]
        return streams, look, anyio.current_time() - looked_at

    async def settled(self) -> frozenset[str]:
        """Wait until no stream this runner owns is retrying or waiting for an operator's
        retry; the streams parked then."""
        while True:
            look = await self._held.look()
            if all(
                held.state is HeldState.PARKED and held.retry_requested_at is None
                for held in look.streams
            ):
                return frozenset(held.stream_name for held in look.streams)
            looked = self._looked
            await looked.wait()
