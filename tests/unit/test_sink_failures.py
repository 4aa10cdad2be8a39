"""The streams sink when handler calls fail: retries in place, holding a stream out of the read
path, its replay rejoining the flow, timeouts and stopping.

No database: the failure decisions come from a scripted ``on_failure`` (or a real
`RetryPolicy`), and every test runs under `anyio.fail_after`, so a broken sink fails instead
of hanging.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from projector.errors import HandlerError
from projector.model.events import Event
from projector.model.failures import (
    Decision,
    HandlerTimeout,
    Hold,
    Retry,
    RetryPolicy,
    RetryWhen,
    Stop,
)
from projector.pipeline.sink import StreamsSink
from tests.support.sink import Completions, ev, evs, settle, until

pytestmark = pytest.mark.anyio

TIMEOUT = 3.0


@dataclass
class Call:
    stream: str
    positions: list[int]
    started: float
    outcome: str = "running"  # "handled", "raised" or "cancelled"


@dataclass
class Handler:
    """A span handler that raises for the streams in ``failing`` (a count of calls to fail,
    or None for all of them), hangs on the next call of the streams in ``hanging`` and waits
    on ``gates``; it records every call."""

    failing: dict[str, int | None] = field(default_factory=dict)
    hanging: set[str] = field(default_factory=set)
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def calls_of(self, stream: str) -> list[list[int]]:
        return [call.positions for call in self.calls if call.stream == stream]

    def handled(self, stream: str) -> list[int]:
        return [
            p
            for call in self.calls
            if call.stream == stream and call.outcome == "handled"
            for p in call.positions
        ]

    def returned(self, stream: str) -> bool:
        return any(c.stream == stream and c.outcome == "handled" for c in self.calls)

    async def __call__(self, stream: str, events: list[Event]) -> int:
        call = Call(stream, [e.position for e in events], anyio.current_time())
        self.calls.append(call)
        try:
            if stream in self.hanging:
                self.hanging.discard(stream)
                await anyio.sleep_forever()
            if stream in self.gates:
                await self.gates[stream].wait()
        except anyio.get_cancelled_exc_class():
            call.outcome = "cancelled"
            raise
        if stream in self.failing:
            left = self.failing[stream]
            if left is None or left > 0:
                self.failing[stream] = None if left is None else left - 1
                call.outcome = "raised"
                raise RuntimeError(f"{stream} is broken")
        call.outcome = "handled"
        return events[-1].position + 1


@dataclass
class Failure:
    stream: str
    positions: list[int]
    error: Exception
    attempt: int


@dataclass
class Decisions:
    """An ``on_failure`` that records what it is told and answers with ``decide``."""

    decide: Callable[[Exception, int], Decision]
    seen: list[Failure] = field(default_factory=list)

    async def __call__(
        self, stream: str, events: list[Event], error: Exception, attempt: int
    ) -> Decision:
        self.seen.append(Failure(stream, [e.position for e in events], error, attempt))
        return self.decide(error, attempt)


@asynccontextmanager
async def running_sink(
    handler: Handler,
    on_failure: Decisions,
    *,
    handler_timeout: float | None = None,
    held: frozenset[str] = frozenset(),
) -> AsyncIterator[StreamsSink]:
    with anyio.fail_after(TIMEOUT):
        async with StreamsSink(
            handler,
            max_concurrent_streams=4,
            max_read_ahead=10,
            on_failure=on_failure,
            handler_timeout=handler_timeout,
            held=held,
        ) as sink:
            yield sink


def hold(error: Exception, attempt: int) -> Decision:
    return Hold(f"failed {attempt} times")


# -- retries -------------------------------------------------------------------------------------


async def test_a_failing_stream_is_retried_after_the_decided_delay_while_other_streams_go_on() -> (
    None
):
    handler = Handler(failing={"bad-1": 2})
    decisions = Decisions(lambda error, attempt: Retry(0.05 * attempt))
    done = Completions()
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("good-0", 0)])
        await done.submit(lane, 1, [ev("bad-1", 0), ev("good-1", 0)])
        await until(lambda: len(decisions.seen) == 1)
        await done.submit(lane, 2, [ev("good-2", 0), ev("bad-1", 1)])
        await until(lambda: handler.returned("good-2"))
        assert handler.calls_of("bad-1") == [[0]]
        assert done.order == [0]
        await lane.wait_empty()

    bad = [call for call in handler.calls if call.stream == "bad-1"]
    assert [call.positions for call in bad] == [[0], [0, 1], [0, 1]]
    assert [call.outcome for call in bad] == ["raised", "raised", "handled"]
    assert bad[1].started - bad[0].started >= 0.05
    assert bad[2].started - bad[1].started >= 0.10
    assert [(f.stream, f.positions, f.attempt) for f in decisions.seen] == [
        ("bad-1", [0], 1),
        ("bad-1", [0, 1], 2),
    ]
    assert all(isinstance(f.error, RuntimeError) for f in decisions.seen)
    assert done.order == [0, 1, 2]


async def test_a_failing_streams_batch_and_every_later_one_wait_until_it_succeeds() -> None:
    handler = Handler(failing={"bad-1": None})
    decisions = Decisions(lambda error, attempt: Retry(0.01))
    done = Completions()
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("good-0", 0)])
        await done.submit(lane, 1, [ev("bad-1", 0)])
        for index in range(2, 6):
            await done.submit(lane, index, [ev(f"good-{index}", 0)])
        await until(lambda: len(decisions.seen) >= 5)
        assert all(handler.returned(f"good-{index}") for index in range(2, 6))
        assert done.order == [0]
        assert lane.in_flight == 5
        handler.failing.clear()
        await lane.wait_empty()
    assert handler.handled("bad-1") == [0]
    assert done.order == [0, 1, 2, 3, 4, 5]


async def test_retries_follow_the_policys_backoff_and_reset_after_a_success() -> None:
    policy = RetryPolicy(base=0.02, cap=0.05, max_attempts=10)
    handler = Handler(failing={"bad-1": 4})
    decisions = Decisions(lambda error, attempt: Retry(policy.backoff(attempt)))
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("bad-1", 0)], 0)
        await lane.wait_empty()
        handler.failing["bad-1"] = 1
        await lane.submit([ev("bad-1", 1)], 0)
        await lane.wait_empty()
    assert [f.attempt for f in decisions.seen] == [1, 2, 3, 4, 1]
    assert handler.handled("bad-1") == [0, 1]


async def test_a_stream_told_to_wait_runs_again_once_ready_and_that_failure_is_not_an_attempt() -> (
    None
):
    ready = anyio.Event()
    handler = Handler(failing={"bad-1": 3})
    # The first failure is the stream's own; the next ones come from an outage.
    decisions = Decisions(
        lambda error, attempt: Retry(0) if attempt == 1 else RetryWhen(ready.wait)
    )
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("bad-1", 0)], 0)
        await until(lambda: len(decisions.seen) == 2)
        await settle()
        assert len(handler.calls_of("bad-1")) == 2, "it ran again before it was ready"
        ready.set()
        await lane.wait_empty()
        assert sink.troubled(longer_than=0) == []

    assert [f.attempt for f in decisions.seen] == [1, 2, 2]
    assert handler.handled("bad-1") == [0]


# -- holding -------------------------------------------------------------------------------------


async def test_a_held_stream_releases_its_batches_and_drops_its_later_events() -> None:
    handler = Handler(failing={"bad-1": None})
    decisions = Decisions(hold)
    done = Completions()
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l", done)
        handler.gates["good-0"] = anyio.Event()
        await done.submit(lane, 0, [ev("good-0", 0)])
        await done.submit(lane, 1, [ev("bad-1", 0), ev("good-1", 0)])
        await until(lambda: sink.held_streams == {"bad-1"})
        await done.submit(lane, 2, [ev("bad-1", 1), ev("good-2", 0)])
        await done.submit(lane, 3, evs("bad-1", [2, 3]))
        await settle()
        assert done.order == []  # completions stay in order: good-0 still runs
        handler.gates.pop("good-0").set()
        await lane.wait_empty()
        assert sink.tracked_streams == 0
    assert handler.calls_of("bad-1") == [[0]]
    assert [(f.stream, f.positions, f.attempt) for f in decisions.seen] == [("bad-1", [0], 1)]
    assert done.order == [0, 1, 2, 3]
    assert all(handler.returned(f"good-{index}") for index in range(3))


async def test_a_rejoining_stream_buffers_its_events_and_runs_them_from_the_given_position() -> (
    None
):
    handler = Handler(failing={"bad-1": None})
    done = Completions()
    async with running_sink(handler, Decisions(hold)) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("bad-1", 0)])
        await until(lambda: sink.held_streams == {"bad-1"})
        handler.failing.clear()

        sink.rejoining("bad-1")  # a replay begins: it will handle positions 0 to 2 itself
        await done.submit(lane, 1, [*evs("bad-1", [1, 2, 3]), ev("good-1", 0)])
        await done.submit(lane, 2, [ev("good-2", 0), ev("bad-1", 4)])
        await settle()
        assert handler.calls_of("bad-1") == [[0]]
        assert handler.returned("good-1")
        assert handler.returned("good-2")
        assert done.order == [0]
        assert sink.held_streams == frozenset()

        sink.rejoin("bad-1", 3)
        await lane.wait_empty()
        await done.submit(lane, 3, [ev("bad-1", 5)])
        await lane.wait_empty()
    assert handler.calls_of("bad-1") == [[0], [3, 4], [5]]
    assert done.order == [0, 1, 2, 3]


async def test_events_read_after_a_rejoin_below_its_position_are_not_delivered() -> None:
    handler = Handler(failing={"bad-1": None})
    done = Completions()
    async with running_sink(handler, Decisions(hold)) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("bad-1", 0)])
        await until(lambda: sink.held_streams == {"bad-1"})
        handler.failing.clear()
        sink.rejoining("bad-1")
        sink.rejoin("bad-1", 5)  # the replay handled 0 to 4 before the source read them
        await done.submit(lane, 1, evs("bad-1", [3, 4]))
        await done.submit(lane, 2, evs("bad-1", [5, 6]))
        await lane.wait_empty()
    assert handler.calls_of("bad-1") == [[0], [5, 6]]
    assert done.order == [0, 1, 2]


async def test_a_stream_held_when_the_sink_starts_is_never_called() -> None:
    handler = Handler()
    done = Completions()
    async with running_sink(handler, Decisions(hold), held=frozenset({"bad-1"})) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("bad-1", 3), ev("good-1", 0)])
        await done.submit(lane, 1, evs("bad-1", [4, 5]))
        await lane.wait_empty()
        assert sink.held_streams == {"bad-1"}
    assert handler.calls_of("bad-1") == []
    assert handler.calls_of("good-1") == [[0]]
    assert done.order == [0, 1]


async def test_holding_a_rejoining_stream_again_releases_the_batches_waiting_on_it() -> None:
    handler = Handler()
    done = Completions()
    async with running_sink(handler, Decisions(hold), held=frozenset({"bad-1"})) as sink:
        lane = sink.lane("l", done)
        sink.rejoining("bad-1")
        await done.submit(lane, 0, [ev("bad-1", 3), ev("good-1", 0)])
        await done.submit(lane, 1, [ev("good-2", 0)])
        await settle()
        assert done.order == []
        sink.hold("bad-1")  # the replay failed: back to dropping its events
        await lane.wait_empty()
        await done.submit(lane, 2, [ev("bad-1", 4)])
        await lane.wait_empty()
        assert sink.held_streams == {"bad-1"}
    assert handler.calls_of("bad-1") == []
    assert done.order == [0, 1, 2]


async def test_a_stream_the_sink_does_not_track_can_be_held() -> None:
    handler = Handler()
    done = Completions()
    async with running_sink(handler, Decisions(hold)) as sink:
        lane = sink.lane("l", done)
        sink.hold("bad-1")
        await done.submit(lane, 0, evs("bad-1", [0, 1]))
        await lane.wait_empty()
    assert handler.calls == []
    assert done.order == [0]


# -- timeouts ------------------------------------------------------------------------------------


async def test_a_call_over_the_handler_timeout_is_cancelled_and_reported_as_a_failure() -> None:
    handler = Handler(hanging={"slow-1"})
    decisions = Decisions(lambda error, attempt: Retry(0))
    done = Completions()
    async with running_sink(handler, decisions, handler_timeout=0.1) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("slow-1", 0), ev("quick-1", 0)])
        await lane.wait_empty()
        finished = anyio.current_time()

    slow = [call for call in handler.calls if call.stream == "slow-1"]
    assert [call.outcome for call in slow] == ["cancelled", "handled"]
    assert slow[1].started - slow[0].started >= 0.1
    assert finished >= slow[1].started
    [failure] = decisions.seen
    assert (failure.stream, failure.positions, failure.attempt) == ("slow-1", [0], 1)
    assert isinstance(failure.error, HandlerTimeout)
    assert "handler_timeout (0.1 s)" in str(failure.error)
    assert handler.handled("quick-1") == [0]
    assert done.order == [0]


async def test_calls_within_the_handler_timeout_are_not_affected() -> None:
    handler = Handler(gates={"s-1": anyio.Event()})
    decisions = Decisions(hold)
    async with running_sink(handler, decisions, handler_timeout=30) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("s-1", 0)], 0)
        await anyio.sleep(0.1)  # a call that takes a moment, well within its timeout
        handler.gates["s-1"].set()
        await lane.wait_empty()
    assert decisions.seen == []
    assert handler.handled("s-1") == [0]


# -- stopping ------------------------------------------------------------------------------------


async def test_a_stop_decision_raises_a_handler_error_naming_the_stream_and_event() -> None:
    handler = Handler(failing={"bad-1": None})
    decisions = Decisions(
        lambda error, attempt: Retry(0) if attempt < 3 else Stop(f"failed {attempt} times")
    )
    done = Completions()
    with pytest.RaisesGroup(
        pytest.RaisesExc(
            HandlerError, match=r"stream 'bad-1' at position 2 .*RuntimeError.*failed 3 times"
        ),
        flatten_subgroups=True,
    ) as caught:
        async with running_sink(handler, decisions) as sink:
            lane = sink.lane("l", done)
            await done.submit(lane, 0, [ev("good-1", 0)])
            await until(lambda: done.order == [0])
            await done.submit(lane, 1, [*evs("bad-1", [2, 3]), ev("good-2", 0)])
            await lane.wait_empty()
    assert isinstance(caught.value.exceptions[0].__cause__, RuntimeError)
    assert handler.calls_of("bad-1") == [[2, 3]] * 3
    assert done.order == [0]


# -- troubled streams ----------------------------------------------------------------------------


async def test_troubled_reports_a_long_running_call_and_a_failing_stream() -> None:
    handler = Handler(failing={"bad-1": None}, gates={"slow-1": anyio.Event()})
    decisions = Decisions(lambda error, attempt: Retry(0.02))
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l")
        submitted = anyio.current_time()
        await lane.submit([ev("slow-1", 0), ev("bad-1", 0), ev("fast-1", 0)], 0)
        await until(lambda: handler.returned("fast-1") and len(decisions.seen) >= 1)
        assert sink.troubled(longer_than=0.15) == []
        await anyio.sleep(0.2)

        troubled = sorted(sink.troubled(longer_than=0.15), key=lambda t: t.stream_name)
        since_submitted = anyio.current_time() - submitted
        assert [(t.stream_name, t.state) for t in troubled] == [
            ("bad-1", "failing"),
            ("slow-1", "running"),
        ]
        bad, slow = troubled
        # Failing is measured from the first failure in a row, not from the latest attempt.
        assert 0.2 <= bad.seconds <= since_submitted
        assert bad.failures >= 3
        assert 0.2 <= slow.seconds <= since_submitted
        assert slow.failures == 0
        assert sink.troubled(longer_than=anyio.current_time() - submitted) == []

        handler.failing.clear()
        handler.gates.pop("slow-1").set()
        await lane.wait_empty()
        assert sink.troubled(longer_than=0) == []


@pytest.mark.parametrize("outcome", ["handled", "raised"])
async def test_a_stream_held_while_its_call_runs_is_not_run_again(outcome: str) -> None:
    # A replay's hold can land while the stream's call is running: whatever the call does
    # then, the stream stays held and its batches are not held back by it.
    gate = anyio.Event()
    handler = Handler(gates={"s-1": gate}, failing={"s-1": None} if outcome == "raised" else {})
    decisions = Decisions(lambda error, attempt: Retry(0))
    done = Completions()
    async with running_sink(handler, decisions) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, evs("s-1", [0, 1]))
        await until(lambda: sink.busy_streams == 1)
        sink.hold("s-1")
        await done.submit(lane, 1, [ev("s-1", 2), ev("s-2", 0)])
        gate.set()
        await lane.wait_empty()
        await settle()
    assert handler.calls_of("s-1") == [[0, 1]]
    assert decisions.seen == []
    assert sink.held_streams == {"s-1"}
    assert done.order == [0, 1]


async def test_taking_a_stream_out_waits_for_its_running_call_and_drops_its_later_events() -> None:
    # An operator's replay (`projector replay`) takes a stream the sink runs out of its read
    # path: it must not start until the call running now has ended.
    gate = anyio.Event()
    handler = Handler(gates={"s-1": gate})
    done = Completions()
    taken_out = anyio.Event()
    async with running_sink(handler, Decisions(hold)) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, evs("s-1", [0, 1]))
        await until(lambda: sink.busy_streams == 1)

        async def take_out() -> None:
            await sink.take_out("s-1")
            taken_out.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(take_out)
            await settle()
            assert not taken_out.is_set()  # the call still runs
            await done.submit(lane, 1, [ev("s-1", 2), ev("s-2", 0)])
            gate.set()
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0, 1]]
    assert sink.held_streams == {"s-1"}
    assert done.order == [0, 1]


async def test_a_stream_taken_out_while_its_failure_is_decided_is_not_retried() -> None:
    deciding = anyio.Event()
    go_on = anyio.Event()

    async def decide(stream: str, events: list[Event], error: Exception, attempt: int) -> Decision:
        deciding.set()
        await go_on.wait()
        return Retry(0)

    handler = Handler(failing={"s-1": None})
    done = Completions()
    with anyio.fail_after(TIMEOUT):
        async with StreamsSink(
            handler, max_concurrent_streams=2, max_read_ahead=10, on_failure=decide
        ) as sink:
            lane = sink.lane("l", done)
            await done.submit(lane, 0, evs("s-1", [0]))
            await deciding.wait()
            await sink.take_out("s-1")
            go_on.set()
            await lane.wait_empty()
            await anyio.sleep(0.05)
    assert handler.calls_of("s-1") == [[0]]
    assert sink.held_streams == {"s-1"}
