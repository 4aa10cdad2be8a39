"""Batch handlers behind the sink's per-stream calls: the span calls running at once are
gathered into groups, the batch handler runs once per group, and each call is answered with
its own stream's outcome.

The sink calls its span handler once per stream span, for up to ``max_concurrent_streams``
streams at once, and retries, parks or releases each stream on its own (see
`projector.pipeline.sink`). A `Batcher` is such a span handler, so the sink needs to know
nothing of batches:

- A call joins the open group. A group closes when it holds ``max_streams`` calls, or when no
  call joined it for ``linger`` seconds (0: for one turn of the event loop). The sink's
  workers take ready streams one after another without waiting, so the calls a batch of
  events makes join within a turn or two. A closed group waits for one of ``max_batches``
  slots, and a group waiting for a slot stays open: under load, groups fill up.
- Each stream's outcome reaches its own call: its next position, or an exception. A batch
  call that raises is split in halves and each half run again, down to single streams, so the
  others commit and only a failing stream fails (for one poison stream in a group of n, about
  2 log2 n calls). Errors that are nobody's stream's fault (a lost connection, `RetryAfter`)
  go to every call of the batch instead: splitting would only repeat them.
- A call cancelled (its ``handler_timeout``, or the run ending) while its group gathers leaves
  it; one cancelled while its group runs cancels the batch call (its transaction rolls back),
  and the group's other calls fail with `HandlerTimeout`, to be retried: none of its streams
  may go on while a batch call for it still runs. Cancelling the runner does not cancel a
  batch call by itself: a stop lets the sink's running calls finish, and so their batch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from projector.model.events import Event
from projector.model.failures import HandlerTimeout, RetryAfter
from projector.model.projection import Spans
from projector.runtime.outage import is_connection_error

logger = logging.getLogger(__name__)

BatchRun = Callable[[Spans], Awaitable[dict[str, int]]]
"""Runs one batch call: each stream's span in, each stream's next position out."""


class _Call:
    """One span call waiting for its group: its events, and its outcome once known."""

    __slots__ = ("done", "error", "events", "next_position", "traceback")

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.done = False
        self.next_position = 0
        self.error: Exception | None = None
        self.traceback: TracebackType | None = None


class _Group:
    """Calls gathered for one batch call.

    Its calls wait for one event, set once every one of them has its outcome: an event per
    call would cost more than the rest of the call's way through the batcher, and only a
    split batch has outcomes at different times (its streams wait for the split to end)."""

    __slots__ = ("arrivals", "calls", "closed", "filled", "scope", "settled")

    def __init__(self) -> None:
        self.calls: dict[str, _Call] = {}
        self.arrivals = 0
        self.closed = False
        self.filled = anyio.Event()
        self.settled = anyio.Event()
        self.scope: anyio.CancelScope | None = None  # set once the batch call runs


class Batcher:
    """The sink's span handler (`handle`) for a batch projection; make one with `running`."""

    def __init__(
        self,
        run: BatchRun,
        tasks: TaskGroup,
        *,
        group: str,
        max_streams: int,
        linger: float,
        max_batches: int,
    ) -> None:
        if max_streams < 1 or max_batches < 1 or linger < 0:
            raise ValueError("max_streams and max_batches must be at least 1, linger 0 or more")
        self._run = run
        self._tasks = tasks
        self._group_name = group
        self._max_streams = max_streams
        self._linger = linger
        self._slots = anyio.CapacityLimiter(max_batches)
        self._open: _Group | None = None

    @classmethod
    @asynccontextmanager
    async def running(
        cls, run: BatchRun, *, group: str, max_streams: int, linger: float, max_batches: int
    ) -> AsyncIterator[Batcher]:
        """A Batcher whose batch calls run in a task group of its own, for the block."""
        async with anyio.create_task_group() as tasks:
            yield cls(
                run,
                tasks,
                group=group,
                max_streams=max_streams,
                linger=linger,
                max_batches=max_batches,
            )
            tasks.cancel_scope.cancel()

    async def handle(self, stream_name: str, events: list[Event]) -> int:
        """Handle one stream's span in the next batch call; its next position to expect."""
        group = self._open
        if group is None or stream_name in group.calls:
            group = self._open_group()
        call = group.calls[stream_name] = _Call(events)
        group.arrivals += 1
        if len(group.calls) >= self._max_streams:
            self._close(group)
        try:
            await group.settled.wait()
        except BaseException:
            self._leave(group, stream_name, call)
            raise
        if call.error is not None:
            # Reset first: an error that went to every call of a batch is raised by each.
            raise call.error.with_traceback(call.traceback)
        return call.next_position

    def _open_group(self) -> _Group:
        if self._open is not None:
            # A second call for a stream already waiting (the sink makes none, but a replay of
            # a parked stream could): it waits for the next group, behind its first.
            self._close(self._open)
        group = self._open = _Group()
        self._tasks.start_soon(self._dispatch, group, name="projector-batch")
        return group

    def _close(self, group: _Group) -> None:
        group.closed = True
        group.filled.set()
        if self._open is group:
            self._open = None

    def _leave(self, group: _Group, stream_name: str, call: _Call) -> None:
        """A call was cancelled while it waited."""
        if call.done:
            return  # its outcome came too late: the sink redelivers, and redelivery is safe
        if group.scope is None:
            del group.calls[stream_name]  # not started: the batch goes on without it
        else:
            group.scope.cancel()

    async def _dispatch(self, group: _Group) -> None:
        # Shielded, as the sink's workers are: a stop lets the calls running finish (within
        # shutdown_timeout), so their batch must go on. Only its own calls' cancellation cuts
        # it short (`_leave`); once they are all gone, it ends by itself: a batch gathering
        # nobody closes, and one left with no calls runs nothing.
        with anyio.CancelScope(shield=True):
            try:
                await self._gather(group)
                async with self._slots:
                    self._close(group)
                    if group.calls:  # unless every call left while it gathered
                        with anyio.CancelScope() as group.scope:
                            await self._settle(group, list(group.calls))
            finally:
                # Cancelled (a call of the group was): no call waits forever.
                self._close(group)
                self._fail_unsettled(group)
                group.settled.set()

    async def _gather(self, group: _Group) -> None:
        """Until the group is full, or no call joined it for ``linger`` seconds (or a turn)."""
        while not group.closed:
            arrivals = group.arrivals
            if self._linger:
                with anyio.move_on_after(self._linger):
                    await group.filled.wait()
            else:
                await anyio.lowlevel.checkpoint()
            if group.arrivals == arrivals:
                return

    async def _settle(self, group: _Group, names: list[str]) -> None:
        """Run the batch call for ``names``, halving it on failure down to single streams."""
        calls = group.calls
        try:
            positions = await self._run({name: calls[name].events for name in names})
        except Exception as exc:
            if len(names) == 1 or _nobody_s_fault(exc):
                for name in names:
                    _resolve(calls[name], error=exc)
                return
            if len(names) == len(calls):
                self._log_split(len(names), exc)
            half = len(names) // 2
            await self._settle(group, names[:half])
            await self._settle(group, names[half:])
            return
        for name in names:
            _resolve(calls[name], next_position=positions[name])

    def _fail_unsettled(self, group: _Group) -> None:
        """The batch call was cancelled: the calls still waiting fail (and are retried)."""
        for call in group.calls.values():
            if not call.done:
                error = HandlerTimeout(
                    "cancelled with its batch call: another stream's call in it outlasted "
                    "handler_timeout, or the run is ending"
                )
                _resolve(call, error=error)

    def _log_split(self, streams: int, error: Exception) -> None:
        logger.info(
            "a batch call of %d streams failed, trying them again in halves: %r",
            streams,
            error,
            extra={
                "action": "batch_split",
                "group": self._group_name,
                "streams": streams,
                "error": f"{type(error).__name__}: {error}",
            },
        )


def _nobody_s_fault(error: Exception) -> bool:
    """Whether the error says nothing of any one stream, so splitting would only repeat it."""
    return isinstance(error, RetryAfter) or is_connection_error(error)


def _resolve(call: _Call, *, next_position: int = 0, error: Exception | None = None) -> None:
    call.next_position, call.error, call.done = next_position, error, True
    if error is not None:
        call.traceback = error.__traceback__
