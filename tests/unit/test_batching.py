"""The batcher: concurrent span calls gathered into batch calls, each answered with its own
stream's outcome, a failing stream isolated by splitting, and cancellations kept safe.

No database: the batch calls are a scripted coroutine that records what it was given.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import psycopg
import pytest

from projector.model.events import Event
from projector.model.failures import HandlerTimeout, RetryAfter
from projector.model.projection import Spans
from projector.runtime.batching import Batcher
from tests.support.sink import evs, settle

pytestmark = pytest.mark.anyio

TIMEOUT = 3.0


@dataclass
class BatchCalls:
    """A batch call that handles every span, except that it raises ``errors[name]`` for a
    batch holding stream ``name``, and waits on ``gate`` when one is given."""

    errors: dict[str, Exception] = field(default_factory=dict)
    gate: anyio.Event | None = None
    batches: list[list[str]] = field(default_factory=list)
    cancelled: int = 0

    async def run(self, spans: Spans) -> dict[str, int]:
        self.batches.append(sorted(spans))
        try:
            if self.gate is not None:
                await self.gate.wait()
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        for name, error in self.errors.items():
            if name in spans:
                raise error
        return {name: events[-1].position + 1 for name, events in spans.items()}


@asynccontextmanager
async def batcher(
    calls: BatchCalls, *, max_streams: int = 100, linger: float = 0.0, max_batches: int = 1
) -> AsyncIterator[Batcher]:
    with anyio.fail_after(TIMEOUT):
        async with Batcher.running(
            calls.run, group="g", max_streams=max_streams, linger=linger, max_batches=max_batches
        ) as running:
            yield running


async def call_all(handler: Batcher, spans: dict[str, list[Event]]) -> dict[str, int | str]:
    """Call ``handler`` for every span at once, as the sink's workers do; each outcome, a
    next position or the name of the exception raised."""
    outcomes: dict[str, int | str] = {}

    async def one(name: str) -> None:
        try:
            outcomes[name] = await handler.handle(name, spans[name])
        except Exception as exc:
            outcomes[name] = type(exc).__name__

    async with anyio.create_task_group() as tasks:
        for name in spans:
            tasks.start_soon(one, name)
    return outcomes


def spans_of(count: int) -> dict[str, list[Event]]:
    return {f"account-{i}": evs(f"account-{i}", [0, 1]) for i in range(count)}


async def test_calls_made_together_are_one_batch_call_and_each_gets_its_own_position() -> None:
    calls = BatchCalls()
    spans = spans_of(5)
    spans["account-9"] = evs("account-9", [7])
    async with batcher(calls) as handler:
        outcomes = await call_all(handler, spans)

    assert calls.batches == [sorted(spans)]
    assert outcomes == {**dict.fromkeys(spans_of(5), 2), "account-9": 8}


async def test_a_batch_closes_when_it_holds_max_streams() -> None:
    calls = BatchCalls()
    async with batcher(calls, max_streams=2) as handler:
        await call_all(handler, spans_of(5))

    assert sorted(len(batch) for batch in calls.batches) == [1, 2, 2]


async def test_a_batch_lingers_for_calls_that_come_a_little_later() -> None:
    calls = BatchCalls()
    spans = spans_of(2)
    async with batcher(calls, linger=0.5) as handler, anyio.create_task_group() as tasks:
        tasks.start_soon(handler.handle, "account-0", spans["account-0"])
        await anyio.sleep(0.01)  # several turns of the loop, well within the linger
        tasks.start_soon(handler.handle, "account-1", spans["account-1"])

    assert calls.batches == [["account-0", "account-1"]]


async def test_one_failing_stream_fails_alone_and_the_others_are_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = BatchCalls(errors={"account-5": ValueError("poison")})
    caplog.set_level(logging.INFO, logger="projector.runtime.batching")
    async with batcher(calls) as handler:
        outcomes = await call_all(handler, spans_of(16))

    assert outcomes.pop("account-5") == "ValueError"
    assert set(outcomes.values()) == {2}
    assert len(outcomes) == 15
    assert ["account-5"] in calls.batches
    assert len(calls.batches) <= 2 * 4 + 1  # halving: about 2 log2(16) calls
    splits = [r for r in caplog.records if getattr(r, "action", None) == "batch_split"]
    assert [r.streams for r in splits] == [16]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error",
    [RetryAfter(1.0), psycopg.OperationalError("the connection is lost")],
    ids=["retry-after", "connection-lost"],
)
async def test_an_error_of_no_one_stream_goes_to_every_call_without_splitting(
    error: Exception,
) -> None:
    spans = spans_of(8)
    calls = BatchCalls(errors=dict.fromkeys(spans, error))
    async with batcher(calls) as handler:
        outcomes = await call_all(handler, spans)

    assert len(calls.batches) == 1
    assert set(outcomes.values()) == {type(error).__name__}


async def test_a_call_cancelled_while_its_batch_gathers_leaves_it() -> None:
    calls = BatchCalls()
    spans = spans_of(2)
    async with batcher(calls, linger=0.2) as handler, anyio.create_task_group() as tasks:
        with anyio.move_on_after(0.01):
            await handler.handle("account-0", spans["account-0"])
        tasks.start_soon(handler.handle, "account-1", spans["account-1"])

    assert calls.batches == [["account-1"]]


async def test_a_call_cancelled_while_its_batch_runs_cancels_it_and_fails_the_others() -> None:
    calls = BatchCalls(gate=anyio.Event())
    spans = spans_of(3)
    outcomes: dict[str, int | str] = {}
    async with batcher(calls) as handler:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_outcome, handler, "account-1", spans, outcomes)
            tasks.start_soon(_outcome, handler, "account-2", spans, outcomes)
            with anyio.move_on_after(0.05):  # a timeout of account-0's call
                await handler.handle("account-0", spans["account-0"])
        await settle()

    assert calls.cancelled == 1
    assert outcomes == {"account-1": "HandlerTimeout", "account-2": "HandlerTimeout"}


async def _outcome(
    handler: Batcher, name: str, spans: dict[str, list[Event]], outcomes: dict[str, int | str]
) -> None:
    try:
        outcomes[name] = await handler.handle(name, spans[name])
    except HandlerTimeout as exc:
        outcomes[name] = type(exc).__name__


async def test_a_batch_waiting_for_a_slot_keeps_gathering() -> None:
    calls = BatchCalls(gate=anyio.Event())
    spans = spans_of(4)
    async with batcher(calls, max_batches=1) as handler, anyio.create_task_group() as tasks:
        tasks.start_soon(handler.handle, "account-0", spans["account-0"])
        await settle()  # account-0's batch runs and holds the only slot
        for name in ("account-1", "account-2"):
            tasks.start_soon(handler.handle, name, spans[name])
        await settle()
        tasks.start_soon(handler.handle, "account-3", spans["account-3"])
        await settle()
        assert calls.gate is not None
        calls.gate.set()

    assert calls.batches == [["account-0"], ["account-1", "account-2", "account-3"]]


async def test_a_batch_call_running_when_the_run_is_cancelled_finishes_for_its_calls() -> None:
    # A stop lets running calls finish: the sink's workers are shielded, so must their batch be.
    calls = BatchCalls(gate=anyio.Event())
    spans = spans_of(1)
    outcomes: dict[str, int] = {}

    async def worker(handler: Batcher) -> None:
        with anyio.CancelScope(shield=True):
            outcomes["account-0"] = await handler.handle("account-0", spans["account-0"])

    async def open_the_gate_soon() -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.05)
            assert calls.gate is not None
            calls.gate.set()

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as run, Batcher.running(
            calls.run, group="g", max_streams=10, linger=0.0, max_batches=1
        ) as handler:
            run.start_soon(worker, handler)
            await settle()  # the batch call runs, waiting on the gate
            run.start_soon(open_the_gate_soon)
            run.cancel_scope.cancel()
            await anyio.sleep(1)  # cancelled at once

    assert outcomes == {"account-0": 2}
    assert calls.cancelled == 0
