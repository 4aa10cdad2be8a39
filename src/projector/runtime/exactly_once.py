"""Transactional projections: the handler's writes and the stream's handled position commit
together, so each event changes the read model exactly once.

Per call (one stream span), in one transaction: lock the stream's row in
``projector.stream_positions`` (or remember it), drop the events at or below it, run the
handler on the transaction's connection, record the new position only if the row still holds
the old one (see `ExactlyOnce` for why that makes it exactly once), commit. Redelivered events
(after a crash, a rebalance or a checkpoint reset) are skipped before the handler sees them.
A call that handled nothing rolls back instead. The statements, and the sessions that save a
round trip per call, are `projector.storage.stream_positions`'. The same for a batch of
streams in one transaction is `projector.runtime.exactly_once_batch`'s.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Self, TypeVar

import anyio

from projector.errors import PositionMovedError
from projector.model.events import Event
from projector.model.projection import Projection
from projector.storage import database
from projector.storage.database import Pool
from projector.storage.stream_positions import NO_ROW, Session, Transactions
from projector.storage.versions import begin_statement

logger = logging.getLogger(__name__)
T = TypeVar("T")

MAX_KNOWN_POSITIONS = 100_000  # streams whose recorded position a runner remembers


class KnownPositions:
    """The positions this runner recorded last, by stream: hints that save reading a row.

    A hint is taken out for the length of a call (`take`) and put back only once the call has
    ended cleanly (`remember`), so that after a failure or a cancellation (whose COMMIT may or
    may not have happened) the next call reads the row again, under lock. Forgotten oldest
    first past MAX_KNOWN_POSITIONS."""

    def __init__(self) -> None:
        self._known: OrderedDict[str, int] = OrderedDict()

    def take(self, stream_name: str) -> int | None:
        return self._known.pop(stream_name, None)

    def remember(self, stream_name: str, applied: int) -> None:
        if applied == NO_ROW:
            return  # nothing recorded, nothing to remember: the next call locks and reads
        self._known[stream_name] = applied
        if len(self._known) > MAX_KNOWN_POSITIONS:
            self._known.popitem(last=False)


@asynccontextmanager
async def transactions_for(pool: Pool, *, schema: str | None = None) -> AsyncIterator[Transactions]:
    """Transactions on ``pool`` for the length of the block, with idle sessions released as
    it goes and given back when it ends; each with ``schema`` (a projection version's) first
    on its ``search_path``, when given."""
    transactions = Transactions(pool, begin=begin_statement(schema))
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(transactions.release_idle, name="projector-transactions-release")
            yield transactions
            tasks.cancel_scope.cancel()
    finally:
        await transactions.close()


class Transactional:
    """What a transactional handler runs with: its projection, sessions on the pool, and the
    positions it remembers. Use it as ``async with``: its transactions (see
    `transactions_for`), in the schema of the projection's version if it has one, last for
    the length of the block."""

    def __init__(self, projection: Projection, pool: Pool, group: str) -> None:
        self._projection = projection
        self._pool = pool
        self._group = group
        self._known = KnownPositions()
        self._exit_stack = AsyncExitStack()
        self._opened: Transactions | None = None

    @property
    def _transactions(self) -> Transactions:
        if self._opened is None:
            raise RuntimeError(f"{type(self).__name__} is used outside its `async with` block")
        return self._opened

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            opening = transactions_for(self._pool, schema=self._projection.schema)
            self._opened = await stack.enter_async_context(opening)
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._exit_stack.__aexit__(exc_type, exc, tb)
        finally:
            self._opened = None

    async def _once_more_if_moved(
        self,
        call: Callable[[bool], Awaitable[T]],
        what: str,
        fields: dict[str, object],
    ) -> T:
        """``call(True)``, trusting the positions this runner remembers; if a position moved
        meanwhile (another runner recorded the stream's events), ``call(False)``: once more
        from the rows, under their locks. (A call that read the rows already can find one
        moved only if it had none: another runner recorded the stream's first events
        meanwhile, and now there is a row to lock.)"""
        try:
            return await call(True)
        except PositionMovedError as moved:
            logger.warning(
                "%s: %s; reading again",
                what,
                moved,
                extra={"action": "stream_position_moved", "group": self._group, **fields},
            )
            return await call(False)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Session]:
        """A session for one call, kept for the next after a clean end or a failure (rolled
        back), given back to the pool when cancelled (a handler timeout, or the run ending)
        with a statement perhaps still running: the pool closes or rolls back what it gets."""
        session = await self._transactions.take()
        try:
            yield session
        except Exception:
            await self._transactions.keep_after_failure(session)
            raise
        except BaseException:
            await self._transactions.give_back(session)
            raise
        self._transactions.keep(session)


class ExactlyOnce(Transactional):
    """The sink's span handler for a transactional projection (`handle`), inside its
    ``async with`` block.

    Why each event is applied once, even with two runners on one stream at the same time (a
    zombie: paused past its lease, or cut off from its lock's session, then resumed while its
    successor runs; or a successor started while its killed predecessor's last transaction is
    still open on the server):

    - An event is applied only by a transaction that also writes the stream's position past
      it; both commit, or neither does.
    - That write is a compare-and-set against the position the call started from, which the
      call either read under ``FOR UPDATE`` or remembered from this runner's own last commit.
      The row's lock serialises writers, and the comparison is made with the latest committed
      value, so of two transactions that started from the same position at most one commits;
      the other fails and rolls back all of its writes. The positions a stream goes through
      form one chain, each transaction applying exactly the events between two links of it.
    - So a zombie can never commit a position that another runner has moved since the zombie
      last saw it, whatever it remembers and however late it wakes up. (It can commit one that
      nobody else moved: then it is the only one to have applied those events.) Nothing here
      trusts the member's lock for exactly-once; the lock only keeps such overlaps rare.

    A remembered position is only a hint that saves reading the row: it is taken out of memory
    for the length of each call and put back only when the call ended cleanly, so a call that
    failed or was cancelled, perhaps with its COMMIT done but unacknowledged, leaves the next
    call to read the row again. A call whose write finds the position moved is logged
    (``stream_position_moved``) and made once more from the row, under lock. Hints are
    forgotten oldest first past MAX_KNOWN_POSITIONS, and with the runner's tenure (see
    `projector.storage.member_locks`).
    """

    async def handle(self, stream_name: str, events: list[Event]) -> int:
        hint = self._known.take(stream_name)  # put back only after a clean end

        async def call(trusting: bool) -> int:
            return await self._call(stream_name, events, hint if trusting else None)

        return await self._once_more_if_moved(call, stream_name, {"stream": stream_name})

    async def _call(self, stream_name: str, events: list[Event], hint: int | None) -> int:
        async with self._session() as session:
            next_position, applied = await self._apply(session, stream_name, events, hint)
        self._known.remember(stream_name, applied)
        return next_position

    async def _apply(
        self, session: Session, stream_name: str, events: list[Event], hint: int | None
    ) -> tuple[int, int]:
        """Run the handler on the events not applied yet and commit with their position; the
        next position to expect, and the last one applied (recorded) for the stream.

        ``hint`` is the last position applied as this runner remembers it; without one, the
        row is read and locked first. Either way the position is written only if the row still
        holds the one this call started from (PositionMovedError otherwise)."""
        applied, locked = hint, False
        if applied is None:
            applied, locked = await session.lock_position(self._group, stream_name), True
        fresh = [event for event in events if event.position > applied]
        if not fresh:
            if locked:
                await session.discard()  # lets go of the row's lock
            return max(events[-1].position, applied) + 1, applied
        with database.lent(session.conn) as conn:
            next_position = await self._projection.handle_in_transaction(conn, stream_name, fresh)
        if next_position <= fresh[0].position:
            await session.discard()  # it handled none of them: keep nothing
            return next_position, applied
        recorded = next_position - 1
        await session.record_and_commit(self._group, stream_name, recorded, expected=applied)
        return next_position, recorded
