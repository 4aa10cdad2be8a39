"""Transactional batch projections: several streams' spans in one transaction, which records
every one of their positions with the handler's writes.

The argument is `ExactlyOnce`'s, made for each stream of the batch at once: every stream's
position is written by a compare-and-set against the position the call started from (read
under ``FOR UPDATE``, or remembered from this runner's own last commit), all of them in one
statement just before the COMMIT (`Session.record_all_and_commit`). If any stream's row moved,
the statement fails, and the whole transaction rolls back with every write of the handler; so
a zombie can commit none of a batch whose streams another runner has moved since. Such a
batch is made once more with every row read under lock (``stream_position_moved``); a batch
that fails again is split (`projector.runtime.batching`).

A batch costs one transaction, whatever its size: a lock-and-read of the rows of the streams
this runner knows nothing of (none, once it has met them), the handler's statements, the
positions' statement, and one round trip for the COMMIT and the next BEGIN.

A projection whose read model keeps each stream's position in its own rows
(``positions="read_model"``, `GuardedBatch`) needs none of the positions' work: its guarded
writes leave out what a row has applied already, in the same statement, so a redelivered
batch (after a crash, or a commit whose outcome was lost) changes nothing twice.
"""

from __future__ import annotations

from projector.model.events import Event
from projector.model.projection import Spans
from projector.runtime.exactly_once import Transactional
from projector.storage import database
from projector.storage.stream_positions import Session


class ExactlyOnceBatch(Transactional):
    """Runs a transactional batch handler (`run`, split on failure by `batching`), inside its
    ``async with`` block."""

    async def run(self, spans: Spans) -> dict[str, int]:
        """Apply the spans' events not applied yet, in one transaction; each stream's next
        position to expect."""
        hints = {name: self._known.take(name) for name in spans}  # put back after a clean end

        async def call(trusting: bool) -> dict[str, int]:
            return await self._call(spans, hints if trusting else dict.fromkeys(spans))

        what = f"a batch of {len(spans)} streams"
        return await self._once_more_if_moved(call, what, {"streams": len(spans)})

    async def _call(self, spans: Spans, hints: dict[str, int | None]) -> dict[str, int]:
        async with self._session() as session:
            next_positions, applied = await self._apply(session, spans, hints)
        for name, position in applied.items():
            self._known.remember(name, position)
        return next_positions

    async def _apply(
        self, session: Session, spans: Spans, hints: dict[str, int | None]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Run the handler on the events not applied yet and commit with their positions;
        each stream's next position to expect, and its last position applied (recorded)."""
        applied = {name: hint for name, hint in hints.items() if hint is not None}
        unknown = [name for name in spans if name not in applied]
        if unknown:
            applied.update(await session.lock_positions(self._group, unknown))
        fresh, next_positions = _fresh(spans, applied)
        if not fresh:
            if unknown:
                await session.discard()  # lets go of the rows' locks
            return next_positions, applied
        with database.lent(session.conn) as conn:
            handled = await self._projection.handle_batch_in_transaction(conn, fresh)
        next_positions.update(handled)
        recorded = {}  # each stream that got anywhere: the last position it handled
        for name, events in fresh.items():
            position = handled.get(name, events[-1].position + 1)
            if position > events[0].position:
                recorded[name] = position - 1
        if not recorded:
            await session.discard()  # it handled none of them: keep nothing
            return next_positions, applied
        expected = {name: applied[name] for name in recorded}
        await session.record_all_and_commit(self._group, recorded, expected=expected)
        return next_positions, {**applied, **recorded}


def _fresh(spans: Spans, applied: dict[str, int]) -> tuple[Spans, dict[str, int]]:
    """The events above each stream's applied position, by stream; and the next position of
    the streams left with none (everything they were given was applied already)."""
    fresh: dict[str, list[Event]] = {}
    done: dict[str, int] = {}
    for name, events in spans.items():
        last = applied[name]
        if events[0].position > last:
            fresh[name] = events
            continue
        kept = [event for event in events if event.position > last]
        if kept:
            fresh[name] = kept
        else:
            done[name] = max(events[-1].position, last) + 1
    return fresh, done


class GuardedBatch(Transactional):
    """Runs a transactional batch handler whose read model holds each stream's position
    (``positions="read_model"``): one transaction per call, and nothing recorded beside the
    handler's own guarded writes; used inside its ``async with`` block."""

    async def run(self, spans: Spans) -> dict[str, int]:
        async with self._session() as session:
            with database.lent(session.conn) as conn:
                next_positions = await self._projection.handle_batch_in_transaction(conn, spans)
            await session.commit()
        return next_positions
