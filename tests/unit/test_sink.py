"""The streams sink: scheduling, ordering, read-ahead and in-order completion, with no database.

Handler timing is controlled with anyio Events (a held stream's calls wait on a gate), and
`anyio.wait_all_tasks_blocked` lets the sink run until nothing more can happen, so that "this did
not happen" is checked without sleeping. Every test runs under `anyio.fail_after`, so a broken
sink fails the test instead of hanging it.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.errors import HandlerError
from projector.model.events import Event
from projector.pipeline.lane import Lane
from projector.pipeline.sink import StreamsSink
from tests.support.sink import Completions, ev, evs, settle, sink_run, until

TIMEOUT = 2.0

Outcome = Callable[[str, list[int]], int | None]


class Handler:
    """A span handler that records its calls, can hold a stream's calls (or, with ``jitter``,
    yield a random number of times), and returns all handled unless ``outcome`` says otherwise."""

    def __init__(
        self,
        outcome: Outcome | None = None,
        *,
        gate: anyio.Event | None = None,
        jitter: random.Random | None = None,
    ) -> None:
        self.calls: list[tuple[str, list[int]]] = []
        self.returned: list[tuple[str, list[int]]] = []
        self.running: defaultdict[str, int] = defaultdict(int)
        self.concurrent = 0
        self.peak = 0
        self.overlapping: set[str] = set()
        self._outcome = outcome
        self._gate = gate
        self._jitter = jitter
        self._gates: dict[str, anyio.Event] = {}

    def hold(self, stream: str) -> None:
        """Make the stream's calls wait, from the next one on, until `release`."""
        self._gates[stream] = anyio.Event()

    def release(self, stream: str) -> None:
        self._gates.pop(stream).set()

    def calls_of(self, stream: str) -> list[list[int]]:
        return [positions for name, positions in self.calls if name == stream]

    def delivered(self, stream: str) -> list[int]:
        """Positions handed to returned calls of the stream, call after call."""
        return [p for name, positions in self.returned if name == stream for p in positions]

    async def __call__(self, stream: str, events: list[Event]) -> int:
        positions = [e.position for e in events]
        self.calls.append((stream, positions))
        if self.running[stream]:
            self.overlapping.add(stream)
        self.running[stream] += 1
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        try:
            gate = self._gates.get(stream, self._gate)
            if gate is not None:
                await gate.wait()
            for _ in range(self._jitter.randint(0, 3) if self._jitter else 0):
                await anyio.lowlevel.checkpoint()
        finally:
            self.running[stream] -= 1
            self.concurrent -= 1
        result = self._outcome(stream, positions) if self._outcome else None
        self.returned.append((stream, positions))
        return positions[-1] + 1 if result is None else result


# -- concurrency ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("cap", range(1, 11))
async def test_concurrent_calls_reach_the_cap_and_never_exceed_it(cap: int) -> None:
    gate = anyio.Event()
    handler = Handler(gate=gate)
    async with sink_run(handler, streams=cap) as (sink, lane, _):
        await lane.submit([ev(f"s-{i}", 0) for i in range(cap + 5)], 0)
        await settle()
        assert (handler.concurrent, sink.busy_streams) == (cap, cap)
        gate.set()
        await lane.wait_empty()
    assert handler.peak == cap
    assert len(handler.calls) == cap + 5


@pytest.mark.anyio
async def test_a_busy_stream_gets_no_second_call_until_its_first_returns() -> None:
    handler = Handler()
    async with sink_run(handler, streams=8) as (sink, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, [ev("s-1", 0)])
        await settle()  # its first call is running, and held
        for index in range(1, 6):
            await done.submit(lane, index, [ev("s-1", index), ev(f"other-{index}", 0)])
        await settle()
        assert handler.calls_of("s-1") == [[0]]
        assert sink.busy_streams == 1
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.overlapping == set()
    assert handler.calls_of("s-1") == [[0], [1, 2, 3, 4, 5]]


# -- ordering, merging, duplicates ------------------------------------------------------------


@pytest.mark.anyio
async def test_each_stream_sees_its_events_once_in_ascending_order_across_many_batches() -> None:
    rnd = random.Random(20240601)
    streams = [f"s-{i}" for i in range(10)]
    next_position = dict.fromkeys(streams, 0)
    batches = []
    for _ in range(200):
        batch = []
        for stream in rnd.sample(streams, rnd.randint(1, 4)):
            for _ in range(rnd.randint(1, 3)):
                batch.append(ev(stream, next_position[stream]))
                next_position[stream] += 1
        batches.append(batch)

    handler = Handler(jitter=rnd)
    async with sink_run(handler, streams=4, read_ahead=5) as (_, lane, done):
        for index, batch in enumerate(batches):
            await done.submit(lane, index, batch)
        await lane.wait_empty()
    assert handler.overlapping == set()
    for stream in streams:
        assert handler.delivered(stream) == list(range(next_position[stream]))
    assert done.order == list(range(200))


@pytest.mark.anyio
async def test_events_buffered_while_a_stream_is_busy_merge_into_its_next_call() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, [ev("s-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        for position in (1, 2, 3):
            await done.submit(lane, position, [ev("s-1", position)])
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0], [1, 2, 3]]
    assert done.order == [0, 1, 2, 3]


@pytest.mark.anyio
async def test_thirty_single_event_batches_of_one_stream_take_far_fewer_calls() -> None:
    async def slow(stream: str, events: list[Event]) -> int:
        # Returns only once the reader is blocked (read-ahead full or all submitted), so every
        # call after the first finds the events of the batches submitted meanwhile.
        calls.append([e.position for e in events])
        await anyio.wait_all_tasks_blocked()
        return events[-1].position + 1

    calls: list[list[int]] = []
    with anyio.fail_after(TIMEOUT):
        async with StreamsSink(slow, max_concurrent_streams=4, max_read_ahead=10) as sink:
            lane = sink.lane("l")
            for position in range(30):
                await lane.submit([ev("s-1", position)], 0)
            await lane.wait_empty()
    assert [p for call in calls for p in call] == list(range(30))
    assert len(calls) <= 6


@pytest.mark.anyio
async def test_duplicates_within_a_batch_are_delivered_once() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, _):
        batch = [ev("s-1", 0), ev("s-1", 1), ev("s-1", 1), ev("s-1", 0), ev("s-1", 2)]
        await lane.submit(batch, 0)
        await lane.wait_empty()
    assert handler.calls == [("s-1", [0, 1, 2])]


@pytest.mark.anyio
async def test_events_resubmitted_while_their_stream_is_busy_are_not_delivered_again() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, evs("s-1", [0, 1]))
        await until(lambda: len(handler.calls) == 1)
        await done.submit(lane, 1, evs("s-1", [1, 2]))
        await done.submit(lane, 2, evs("s-1", [0]))
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0, 1], [2]]
    assert done.order == [0, 1, 2]


@pytest.mark.anyio
async def test_events_below_a_streams_handled_position_are_dropped() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, [ev("s-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        await done.submit(lane, 1, [ev("s-1", 1)])
        handler.release("s-1")
        handler.hold("s-1")
        await until(lambda: len(handler.calls) == 2)  # the stream has handled below 1
        await done.submit(lane, 2, evs("s-1", [0, 1, 2]))
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0], [1], [2]]
    assert done.order == [0, 1, 2]


@pytest.mark.anyio
async def test_events_reordered_within_a_batch_are_delivered_in_stream_order() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, _):
        batch = [ev("s-1", 2), ev("s-1", 0), ev("t-1", 1), ev("s-1", 1), ev("t-1", 0)]
        await lane.submit(batch, 0)
        await lane.wait_empty()
    assert sorted(handler.calls) == [("s-1", [0, 1, 2]), ("t-1", [0, 1])]


@pytest.mark.anyio
async def test_events_of_buffered_batches_arriving_out_of_order_are_merged_in_order() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, _):
        handler.hold("s-1")
        await lane.submit([ev("s-1", 0)], 0)
        await until(lambda: len(handler.calls) == 1)
        await lane.submit(evs("s-1", [3, 4]), 0)
        await lane.submit(evs("s-1", [2, 1, 3]), 0)
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0], [1, 2, 3, 4]]


# -- read-ahead and completion ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("read_ahead", [1, 3])
async def test_submit_waits_while_read_ahead_batches_are_incomplete(read_ahead: int) -> None:
    handler = Handler()
    returned = anyio.Event()

    async def submit_one_more(lane: Lane) -> None:
        await lane.submit([ev("s-1", read_ahead)], 0)
        returned.set()

    async with sink_run(handler, read_ahead=read_ahead) as (_, lane, _):
        handler.hold("s-1")
        for position in range(read_ahead):
            await lane.submit([ev("s-1", position)], 0)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(submit_one_more, lane)
            await settle()
            assert not returned.is_set()
            assert lane.in_flight == read_ahead
            handler.release("s-1")
            await returned.wait()
        await lane.wait_empty()
    assert handler.delivered("s-1") == list(range(read_ahead + 1))


@pytest.mark.anyio
async def test_batches_complete_in_submit_order_when_later_ones_finish_first() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, done):
        handler.hold("a-1")
        await done.submit(lane, 0, [ev("a-1", 0)])
        await done.submit(lane, 1, [ev("b-1", 0)])
        await done.submit(lane, 2, [ev("c-1", 0)])
        await settle()
        assert sorted(handler.returned) == [("b-1", [0]), ("c-1", [0])]
        assert done.order == []
        handler.release("a-1")
        await lane.wait_empty()
    assert done.order == [0, 1, 2]


@pytest.mark.anyio
async def test_a_slow_stream_holds_back_completion_while_other_streams_proceed() -> None:
    handler = Handler()
    async with sink_run(handler, streams=2, read_ahead=12) as (_, lane, done):
        handler.hold("slow-1")
        await done.submit(lane, 0, [ev("slow-1", 0), ev("fast-0", 0)])
        for index in range(1, 6):
            await done.submit(lane, index, [ev(f"fast-{index}", 0), ev("fast-0", index)])
        await settle()
        assert handler.delivered("fast-0") == [0, 1, 2, 3, 4, 5]
        assert {f"fast-{i}" for i in range(1, 6)} <= {name for name, _ in handler.returned}
        assert done.order == []
        assert lane.in_flight == 6
        handler.release("slow-1")
        await lane.wait_empty()
    assert done.order == [0, 1, 2, 3, 4, 5]


@pytest.mark.anyio
async def test_an_empty_batch_completes_at_once_and_in_order() -> None:
    handler = Handler()
    async with sink_run(handler) as (_, lane, done):
        await done.submit(lane, 0, [])
        assert done.order == [0]
        handler.hold("a-1")
        await done.submit(lane, 1, [ev("a-1", 0)])
        await done.submit(lane, 2, [])
        await settle()
        assert done.order == [0]
        handler.release("a-1")
        await lane.wait_empty()
    assert done.order == [0, 1, 2]
    assert handler.calls == [("a-1", [0])]


@pytest.mark.anyio
async def test_a_batch_of_already_handled_events_completes_without_a_call_and_in_order() -> None:
    handler = Handler()
    async with sink_run(handler) as (sink, lane, first):
        second = Completions()
        other_lane = sink.lane("second", second)
        handler.hold("s-1")
        await first.submit(lane, 0, [ev("s-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        await first.submit(lane, 1, [ev("s-1", 1)])
        handler.release("s-1")
        handler.hold("s-1")
        await until(lambda: len(handler.calls) == 2)  # handled below 1, busy with 1
        await second.submit(other_lane, 0, [ev("s-1", 0)])
        assert second.order == [0]
        await first.submit(lane, 2, [ev("s-1", 0)])
        await settle()
        assert first.order == [0]
        handler.release("s-1")
        await lane.wait_empty()
    assert first.order == [0, 1, 2]
    assert handler.calls_of("s-1") == [[0], [1]]


# -- handler results ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_partial_result_redelivers_the_rest_and_holds_the_batch_until_handled() -> None:
    handler = Handler(lambda stream, positions: 2 if positions[0] == 0 else None)
    async with sink_run(handler) as (_, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, evs("s-1", [0, 1, 2, 3]))
        await until(lambda: len(handler.calls) == 1)
        await done.submit(lane, 1, [ev("s-1", 4)])
        handler.release("s-1")
        handler.hold("s-1")
        await until(lambda: len(handler.calls) == 2)
        await settle()
        assert handler.calls_of("s-1") == [[0, 1, 2, 3], [2, 3, 4]]
        assert done.order == []
        handler.release("s-1")
        await lane.wait_empty()
    assert done.order == [0, 1]


@pytest.mark.anyio
async def test_a_call_that_handles_nothing_is_retried_after_the_stall_delay_not_in_a_hot_loop() -> (
    None
):
    stall_delay, window = 0.05, 0.3
    times: list[float] = []
    refusing = True

    def outcome(stream: str, positions: list[int]) -> int | None:
        times.append(anyio.current_time())
        return positions[0] if refusing else None

    handler = Handler(outcome)
    async with sink_run(handler, stall_delay=stall_delay) as (_, lane, done):
        started = anyio.current_time()
        await done.submit(lane, 0, evs("s-1", [0, 1]))
        await anyio.sleep(window)
        assert 2 <= len(handler.calls) <= (anyio.current_time() - started) / stall_delay + 1
        assert all(
            later - earlier >= 0.8 * stall_delay for earlier, later in itertools.pairwise(times)
        )
        assert handler.calls_of("s-1") == [[0, 1]] * len(handler.calls)
        assert done.order == []
        refusing = False
        await lane.wait_empty()
    assert done.order == [0]


@pytest.mark.anyio
async def test_skipping_ahead_drops_buffered_and_later_events_below_the_position() -> None:
    handler = Handler(lambda stream, positions: 5 if positions == [0] else None)
    async with sink_run(handler) as (_, lane, done):
        handler.hold("s-1")
        await done.submit(lane, 0, [ev("s-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        await done.submit(lane, 1, evs("s-1", [1, 2]))
        await done.submit(lane, 2, evs("s-1", [3, 6]))
        handler.release("s-1")
        handler.hold("s-1")
        await until(lambda: len(handler.calls) == 2)
        await done.submit(lane, 3, evs("s-1", [4, 7]))
        handler.release("s-1")
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0], [6], [7]]
    assert done.order == [0, 1, 2, 3]


@pytest.mark.anyio
async def test_skipping_ahead_drops_events_read_after_the_stream_went_idle() -> None:
    handler = Handler(lambda stream, positions: 5 if positions == [0] else None)
    async with sink_run(handler) as (_, lane, _):
        await lane.submit([ev("s-1", 0)], 0)
        await lane.wait_empty()
        await lane.submit(evs("s-1", [1, 4, 5]), 0)
        await lane.wait_empty()
    assert handler.calls_of("s-1") == [[0], [5]]


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_state_is_forgotten_once_its_batches_complete() -> None:
    batch_size, read_ahead = 50, 4
    most_tracked = 0

    def outcome(stream: str, positions: list[int]) -> None:
        nonlocal most_tracked
        most_tracked = max(most_tracked, sink.tracked_streams)

    handler = Handler(outcome)
    options = {"streams": 8, "read_ahead": read_ahead, "time_limit": 10}
    async with sink_run(handler, **options) as (sink, lane, _):
        for index in range(200):
            first = index * batch_size
            batch = [ev(f"s-{i}", 0) for i in range(first, first + batch_size)]
            await lane.submit(batch, 0)
        await lane.wait_empty()
        assert sink.tracked_streams == 0
    assert len(handler.calls) == 200 * batch_size
    assert most_tracked <= read_ahead * batch_size


# -- failure and stopping ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_handler_exception_leaves_the_sink_and_no_later_batch_completes() -> None:
    def outcome(stream: str, positions: list[int]) -> None:
        if stream == "bad-1":
            raise RuntimeError("boom")

    handler = Handler(outcome)
    with pytest.RaisesGroup(
        pytest.RaisesExc(HandlerError, match=r"stream 'bad-1' at position 3"),
        flatten_subgroups=True,
    ) as caught:
        async with sink_run(handler) as (_, lane, done):
            await done.submit(lane, 0, [ev("good-1", 0)])
            await until(lambda: done.order == [0])
            handler.hold("bad-1")
            await done.submit(lane, 1, evs("bad-1", [3, 4]))
            await done.submit(lane, 2, [ev("good-2", 0)])
            await settle()
            handler.release("bad-1")
            await lane.wait_empty()
    assert isinstance(caught.value.exceptions[0].__cause__, RuntimeError)
    assert ("good-2", [0]) in handler.returned
    assert done.order == [0]


@pytest.mark.anyio
async def test_stop_lets_running_calls_finish_and_starts_no_new_call() -> None:
    handler = Handler()
    stopped: list[bool] = []

    async def stop(sink: StreamsSink) -> None:
        stopped.append(await sink.stop(grace_period=1))

    async with sink_run(handler, streams=1) as (sink, lane, done):
        handler.hold("a-1")
        await done.submit(lane, 0, [ev("a-1", 0)])
        await done.submit(lane, 1, [ev("b-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stop, sink)
            await settle()
            assert stopped == []
            handler.release("a-1")
        await done.submit(lane, 2, [ev("c-1", 0)])
        await settle()
    assert stopped == [True]
    assert handler.calls == [("a-1", [0])]
    assert done.order == [0]


@pytest.mark.anyio
async def test_stop_returns_false_when_a_call_outlasts_the_grace_period() -> None:
    handler = Handler()
    async with sink_run(handler) as (sink, lane, done):
        handler.hold("a-1")
        await done.submit(lane, 0, [ev("a-1", 0)])
        await until(lambda: len(handler.calls) == 1)
        assert await sink.stop(grace_period=0.05) is False
        assert sink.busy_streams == 1
    assert handler.returned == []
    assert done.order == []


@pytest.mark.anyio
async def test_stop_with_no_running_call_returns_true_without_waiting_its_grace_period() -> None:
    stopped: list[bool] = []

    async def stop(sink: StreamsSink) -> None:
        stopped.append(await sink.stop(grace_period=3600))

    async with sink_run(Handler()) as (sink, _, _), anyio.create_task_group() as tasks:
        tasks.start_soon(stop, sink)
        await settle()  # a stop that waited for anything would be blocked here, not done
        assert stopped == [True]


@pytest.mark.anyio
async def test_a_sink_left_before_its_workers_first_ran_closes() -> None:
    with anyio.fail_after(TIMEOUT):
        async with StreamsSink(Handler(), max_concurrent_streams=3, max_read_ahead=1):
            pass


def test_a_sink_needs_at_least_one_worker_and_one_batch_of_read_ahead() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StreamsSink(Handler(), max_concurrent_streams=0, max_read_ahead=1)
    with pytest.raises(ValueError, match="at least 1"):
        StreamsSink(Handler(), max_concurrent_streams=1, max_read_ahead=0)


def test_each_lane_name_opens_one_lane() -> None:
    sink = StreamsSink(Handler(), max_concurrent_streams=1, max_read_ahead=1)
    sink.lane("account")
    with pytest.raises(ValueError, match="'account'"):
        sink.lane("account")


# -- property: ordering and completion invariants ------------------------------------------------


@dataclass
class Scenario:
    workers: int
    read_ahead: int
    lanes: list[list[list[tuple[str, int]]]]  # lane -> batches -> (stream, position)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    lanes = []
    for lane_index in range(draw(st.integers(1, 4))):
        streams = [f"c{lane_index}-{i}" for i in range(draw(st.integers(1, 4)))]
        next_position = dict.fromkeys(streams, 0)
        batches: list[list[tuple[str, int]]] = [[]]
        for stream in draw(st.lists(st.sampled_from(streams), max_size=30)):
            batches[-1].append((stream, next_position[stream]))
            next_position[stream] += draw(st.sampled_from([1, 1, 1, 2]))
            if draw(st.integers(0, 9)) == 0:  # an occasional duplicate
                batches[-1].append(batches[-1][-1])
            if draw(st.integers(0, 3)) == 0:
                batches.append([])
        lanes.append([draw(st.permutations(b)) if draw(st.booleans()) else b for b in batches])
    return Scenario(draw(st.integers(1, 6)), draw(st.integers(1, 4)), lanes)


class Checker:
    """A span handler with random timing and results that checks the sink's invariants."""

    def __init__(self, scenario: Scenario, rnd: random.Random) -> None:
        self.scenario = scenario
        self.rnd = rnd
        self.expected: dict[str, list[int]] = defaultdict(list)
        for batches in scenario.lanes:
            for stream, position in sorted({e for batch in batches for e in batch}):
                self.expected[stream].append(position)
        self.handled: dict[str, list[int]] = defaultdict(list)
        self.busy: set[str] = set()
        self.completed = [0] * len(scenario.lanes)
        self.violations: list[str] = []

    async def __call__(self, stream: str, events: list[Event]) -> int:
        positions = [e.position for e in events]
        if stream in self.busy:
            self.violations.append(f"two calls at once for {stream}")
        self.busy.add(stream)
        if len(self.busy) > self.scenario.workers:
            self.violations.append(f"{len(self.busy)} calls with {self.scenario.workers} workers")
        done = len(self.handled[stream])
        if positions != self.expected[stream][done : done + len(positions)]:
            self.violations.append(f"{stream} got {positions} after handling {done}")
        for _ in range(self.rnd.randint(0, 3)):
            await anyio.lowlevel.checkpoint()
        self.busy.discard(stream)
        count = self._handled_count(len(positions))
        self.handled[stream].extend(positions[:count])
        return positions[count] if count < len(positions) else positions[-1] + 1

    def _handled_count(self, length: int) -> int:
        roll = self.rnd.random()
        if roll < 0.05:
            return 0
        if roll < 0.2:
            return self.rnd.randint(1, length)
        return length

    def advance(self, name: str, index: int) -> None:
        """A lane's progress; lane ``c<n>`` submits its batches with their index as position."""
        lane = int(name.removeprefix("c"))
        if index != self.completed[lane]:
            self.violations.append(f"lane {lane} completed {index} before {self.completed[lane]}")
        self.completed[lane] = index + 1
        for batch in self.scenario.lanes[lane][: index + 1]:
            for stream, position in batch:
                if position not in self.handled[stream]:
                    self.violations.append(
                        f"lane {lane} batch {index} done before {stream}@{position}"
                    )


@pytest.mark.anyio
@settings(max_examples=400, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**32))
async def test_any_batches_are_handled_in_order_within_the_limits_and_complete_in_order(
    scenario: Scenario, seed: int
) -> None:
    checker = Checker(scenario, random.Random(seed))

    async def feed(lane: Lane, index: int) -> None:
        for number, batch in enumerate(scenario.lanes[index]):
            events = [ev(stream, position) for stream, position in batch]
            await lane.submit(events, number)
            if lane.ahead - max(len(events), 1) >= scenario.read_ahead:
                checker.violations.append(f"lane {index} took a batch with {lane.ahead} ahead")
        await lane.wait_empty()

    with anyio.fail_after(5):
        async with StreamsSink(
            checker,
            max_concurrent_streams=scenario.workers,
            max_read_ahead=scenario.read_ahead,
            stall_delay=0,
        ) as sink:
            async with anyio.create_task_group() as tasks:
                for index in range(len(scenario.lanes)):
                    tasks.start_soon(feed, sink.lane(f"c{index}", checker), index)
            assert sink.tracked_streams == 0
    assert checker.violations == []
    assert checker.completed == [len(batches) for batches in scenario.lanes]
    assert checker.handled == checker.expected
