"""The streams sink feeding a batch handler (`Batches`): a read batch's streams go to one call,
grouped once; a busy or held stream's span joins a later call in order; each stream gets its
own outcome; at most ``max_calls`` calls run, each of at most ``max_streams`` streams; a
failing stream is decided on alone while the others complete; a timeout fails the whole call.

No database: the batch handler is scripted, and every test runs under `anyio.fail_after`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
import pytest

from projector.model.events import Event
from projector.model.failures import Decision, HandlerTimeout, Hold, Retry
from projector.pipeline.batch_sink import BatchesSink
from projector.pipeline.calls import Batches
from projector.pipeline.observe import Observer
from tests.support.sink import Completions, ev, evs, settle, until

pytestmark = pytest.mark.anyio

TIMEOUT = 5.0


@dataclass
class BatchHandler:
    """Records each call's spans; a stream in ``failing`` gets an error as its outcome, one in
    ``partly`` handles only its first event; a call holding a stream of ``gates`` waits on it."""

    failing: set[str] = field(default_factory=set)
    failing_once: set[str] = field(default_factory=set)
    partly: set[str] = field(default_factory=set)
    gates: dict[str, anyio.Event] = field(default_factory=dict)
    hang: bool = False
    calls: list[dict[str, list[int]]] = field(default_factory=list)
    handled: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    given: list[tuple[str, list[int], int]] = field(default_factory=list)  # and how many handled
    running: set[str] = field(default_factory=set)
    overlaps: list[str] = field(default_factory=list)
    most_at_once: int = 0

    async def __call__(self, spans: dict[str, list[Event]]) -> dict[str, int | Exception]:
        self.calls.append({name: [e.position for e in events] for name, events in spans.items()})
        if self.running & set(spans):
            self.overlaps.extend(sorted(self.running & set(spans)))
        self.running |= set(spans)
        self.most_at_once = max(self.most_at_once, len(self.running))
        try:
            if self.hang:
                await anyio.sleep_forever()
            for name in spans:
                if name in self.gates:
                    await self.gates[name].wait()
            await anyio.lowlevel.checkpoint()
        finally:
            self.running -= set(spans)
        return {name: self._outcome(name, events) for name, events in spans.items()}

    def _outcome(self, name: str, events: list[Event]) -> int | Exception:
        positions = [e.position for e in events]
        if name in self.failing or name in self.failing_once:
            self.failing_once.discard(name)
            self.given.append((name, positions, 0))
            return RuntimeError(f"{name} is broken")
        handled = positions[:1] if name in self.partly else positions
        self.handled[name].extend(handled)
        self.given.append((name, positions, len(handled)))
        return handled[-1] + 1

    def delivered(self, stream: str) -> list[int]:
        """The positions the stream's calls handled (they did not fail), in order."""
        return self.handled[stream]


@dataclass
class Decisions:
    decide: Decision
    seen: list[tuple[str, list[int], type[Exception]]] = field(default_factory=list)

    async def __call__(
        self, stream: str, events: list[Event], error: Exception, attempt: int
    ) -> Decision:
        self.seen.append((stream, [e.position for e in events], type(error)))
        return self.decide


@asynccontextmanager
async def batch_sink(
    handler: BatchHandler,
    *,
    max_streams: int = 100,
    max_calls: int = 1,
    linger: float = 0.0,
    read_ahead: int = 1000,
    on_failure: Decisions | None = None,
    handler_timeout: float | None = None,
) -> AsyncIterator[BatchesSink]:
    with anyio.fail_after(TIMEOUT):
        async with BatchesSink(
            Batches(handler, max_streams=max_streams, max_calls=max_calls, linger=linger),
            max_read_ahead=read_ahead,
            on_failure=on_failure or Decisions(Hold("failed")),
            handler_timeout=handler_timeout,
        ) as sink:
            yield sink


async def test_a_read_batch_is_one_call_with_each_streams_span_grouped_once() -> None:
    handler = BatchHandler()
    done = Completions()
    async with batch_sink(handler) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("a-1", 0), ev("b-1", 0), ev("a-1", 1), ev("c-1", 5)])
        await lane.wait_empty()

    assert handler.calls == [{"a-1": [0, 1], "b-1": [0], "c-1": [5]}]
    assert done.order == [0]


async def test_a_spans_events_reordered_or_repeated_in_a_batch_reach_the_call_in_order_once() -> (
    None
):
    handler = BatchHandler()
    done = Completions()
    async with batch_sink(handler) as sink:
        lane = sink.lane("l", done)
        batch = [ev("a-1", 2), ev("b-1", 0), ev("a-1", 0), ev("a-1", 2), ev("a-1", 1)]
        await done.submit(lane, 0, batch)
        await lane.wait_empty()

    assert handler.calls == [{"a-1": [0, 1, 2], "b-1": [0]}]
    assert done.order == [0]


async def test_a_call_holds_at_most_max_streams_and_the_rest_join_the_next_call() -> None:
    handler = BatchHandler()
    async with batch_sink(handler, max_streams=2) as sink:
        lane = sink.lane("l")
        await lane.submit([ev(f"s-{i}", 0) for i in range(5)], 0)
        await lane.wait_empty()

    assert [sorted(call) for call in handler.calls] == [["s-0", "s-1"], ["s-2", "s-3"], ["s-4"]]


async def test_a_busy_streams_span_waits_and_joins_a_later_call_in_order() -> None:
    gate = anyio.Event()
    handler = BatchHandler(gates={"a-1": gate})
    done = Completions()
    async with batch_sink(handler, max_calls=2) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("a-1", 0)])
        await until(lambda: "a-1" in handler.running)
        await done.submit(lane, 1, [ev("a-1", 1), ev("b-1", 0)])
        await done.submit(lane, 2, [ev("a-1", 2), ev("b-1", 1)])
        await until(lambda: handler.delivered("b-1") == [0, 1])
        assert done.order == []  # batch 0 waits for a-1, and completions stay in order
        gate.set()
        await lane.wait_empty()

    assert handler.delivered("a-1") == [0, 1, 2]
    assert [call["a-1"] for call in handler.calls if "a-1" in call] == [[0], [1, 2]]
    assert handler.overlaps == []
    assert done.order == [0, 1, 2]


async def test_at_most_max_calls_run_at_once() -> None:
    gates = {f"s-{i}": anyio.Event() for i in range(4)}
    handler = BatchHandler(gates=gates)
    async with batch_sink(handler, max_streams=1, max_calls=2) as sink:
        lane = sink.lane("l")
        await lane.submit([ev(name, 0) for name in gates], 0)
        await settle()
        assert len(handler.calls) == 2
        for gate in gates.values():
            gate.set()
        await lane.wait_empty()

    assert handler.most_at_once == 2
    assert len(handler.calls) == 4


async def test_each_stream_settles_by_its_own_outcome() -> None:
    handler = BatchHandler(partly={"p-1"})
    async with batch_sink(handler) as sink:
        lane = sink.lane("l")
        await lane.submit([*evs("p-1", [0, 1, 2]), *evs("q-1", [0, 1])], 0)
        await lane.wait_empty()

    # p-1 handled one event per call: what it left is offered again, in order.
    assert [call["p-1"] for call in handler.calls if "p-1" in call] == [[0, 1, 2], [1, 2], [2]]
    assert [call["q-1"] for call in handler.calls if "q-1" in call] == [[0, 1]]


async def test_a_failing_stream_is_held_alone_while_the_others_complete() -> None:
    handler = BatchHandler(failing={"bad-1"})
    decisions = Decisions(Hold("failed"))
    done = Completions()
    async with batch_sink(handler, on_failure=decisions) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("bad-1", 0), ev("good-1", 0)])
        await until(lambda: sink.held_streams == {"bad-1"})
        await done.submit(lane, 1, [ev("bad-1", 1), ev("good-2", 0)])
        await lane.wait_empty()
        assert sink.held_streams == {"bad-1"}

    assert decisions.seen == [("bad-1", [0], RuntimeError)]
    assert handler.delivered("good-1") == [0]
    assert handler.delivered("good-2") == [0]
    assert not any("bad-1" in call for call in handler.calls[1:])  # its later event dropped
    assert done.order == [0, 1]


async def test_a_stream_retried_in_place_runs_again_with_its_events_in_order() -> None:
    handler = BatchHandler(failing={"bad-1"})
    decisions = Decisions(Retry(0.01))
    async with batch_sink(handler, on_failure=decisions) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("bad-1", 0), ev("good-1", 0)], 0)
        await until(lambda: len(decisions.seen) == 1)
        await lane.submit([ev("bad-1", 1)], 1)
        handler.failing.clear()
        await lane.wait_empty()

    assert [call["bad-1"] for call in handler.calls if "bad-1" in call][-1] == [0, 1]
    assert handler.delivered("bad-1") == [0, 1]


async def test_a_call_over_the_handler_timeout_fails_each_of_its_streams() -> None:
    handler = BatchHandler(hang=True)
    decisions = Decisions(Hold("timed out"))
    async with batch_sink(handler, on_failure=decisions, handler_timeout=0.1) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("s-1", 0), ev("s-2", 0)], 0)
        await lane.wait_empty()
        assert sink.held_streams == {"s-1", "s-2"}

    assert sorted(decisions.seen) == [("s-1", [0], HandlerTimeout), ("s-2", [0], HandlerTimeout)]
    assert handler.running == set()


async def test_a_batch_call_running_when_the_sink_stops_finishes_within_the_grace() -> None:
    gate = anyio.Event()
    handler = BatchHandler(gates={"s-1": gate})
    async with batch_sink(handler) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("s-1", 0)], 0)
        await until(lambda: "s-1" in handler.running)

        async def open_soon() -> None:
            await anyio.sleep(0.05)
            gate.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(open_soon)
            assert await sink.stop(grace_period=2.0)
    assert handler.running == set()
    assert len(handler.calls) == 1


async def test_a_call_lingers_for_streams_that_become_ready_a_little_later() -> None:
    handler = BatchHandler()
    async with batch_sink(handler, max_streams=3, linger=0.5) as sink:
        lane = sink.lane("l")
        await lane.submit([ev("s-1", 0)], 0)
        await anyio.sleep(0.01)  # several turns of the loop, well within the linger
        await lane.submit([ev("s-2", 0), ev("s-3", 0)], 1)
        await lane.wait_empty()

    assert [sorted(call) for call in handler.calls] == [["s-1", "s-2", "s-3"]]


@pytest.mark.parametrize("seed", range(20))
async def test_random_batches_keep_order_one_call_per_stream_and_complete_in_order(
    seed: int,
) -> None:
    rnd = random.Random(seed)
    streams = [f"s-{i}" for i in range(12)]
    next_position = dict.fromkeys(streams, 0)
    batches = []
    for _ in range(60):
        batch = []
        for stream in rnd.sample(streams, rnd.randint(1, 5)):
            for _ in range(rnd.randint(1, 3)):
                batch.append(ev(stream, next_position[stream]))
                next_position[stream] += 1
        batches.append(batch)
    handler = BatchHandler(
        partly={s for s in streams if rnd.random() < 0.2},
        failing_once={s for s in streams if rnd.random() < 0.2},
    )
    done = Completions()
    async with batch_sink(
        handler,
        max_streams=rnd.randint(1, 6),
        max_calls=rnd.randint(1, 3),
        read_ahead=40,
        on_failure=Decisions(Retry(0)),
    ) as sink:
        lane = sink.lane("l", done)
        for index, batch in enumerate(batches):
            await done.submit(lane, index, batch)
        await lane.wait_empty()
        assert sink.tracked_streams == 0

    # Each stream's calls start at its first event not handled yet: none is skipped, none is
    # given again once handled, whatever failed or was handled in part.
    expected = dict.fromkeys(streams, 0)
    for stream, positions, count in handler.given:
        assert positions[0] == expected[stream], f"{stream} given {positions}, {expected}"
        expected[stream] += count
    assert dict(handler.handled) == {s: list(range(next_position[s])) for s in streams}
    assert handler.overlaps == []
    assert done.order == list(range(len(batches)))


class Finished(Observer):
    """Records what the sink reports of each stream's part in a call."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, str | None]] = []

    def handler_finished(
        self, stream_name: str, count: int, seconds: float, error: BaseException | None
    ) -> None:
        self.seen.append((stream_name, count, None if error is None else type(error).__name__))


async def test_each_streams_part_of_a_call_is_reported_with_its_outcome() -> None:
    handler = BatchHandler(failing={"bad-1"})
    observer = Finished()
    with anyio.fail_after(TIMEOUT):
        async with BatchesSink(
            Batches(handler, max_streams=10, max_calls=1),
            max_read_ahead=100,
            on_failure=Decisions(Hold("failed")),
            observer=observer,
        ) as sink:
            lane = sink.lane("l")
            await lane.submit([*evs("good-1", [0, 1]), ev("bad-1", 0)], 0)
            await lane.wait_empty()

    assert sorted(observer.seen) == [("bad-1", 1, "RuntimeError"), ("good-1", 2, None)]


async def test_a_stream_the_handler_leaves_out_of_its_outcomes_handled_all_of_its_events() -> None:
    calls: list[dict[str, list[int]]] = []

    async def silent(spans: dict[str, list[Event]]) -> dict[str, int | Exception]:
        calls.append({name: [e.position for e in events] for name, events in spans.items()})
        return {}

    done = Completions()
    with anyio.fail_after(TIMEOUT):
        batches = Batches(silent, max_streams=10, max_calls=1)
        async with BatchesSink(batches, max_read_ahead=100) as sink:
            lane = sink.lane("l", done)
            await done.submit(lane, 0, [*evs("a-1", [0, 1]), ev("b-1", 0)])
            await lane.wait_empty()
            assert sink.tracked_streams == 0

    assert calls == [{"a-1": [0, 1], "b-1": [0]}]
    assert done.order == [0]
async def test_taking_out_a_stream_waits_for_the_unit_that_holds_it_to_be_called() -> None:
    # A stream in a unit, queued or running, is given to that call, held or not: a replay
    # from the stream itself must wait for it.
    gate = anyio.Event()
    handler = BatchHandler(gates={"a-1": gate})
    done = Completions()
    taken_out = anyio.Event()
    async with batch_sink(handler, max_calls=1) as sink:
        lane = sink.lane("l", done)
        await done.submit(lane, 0, [ev("a-1", 0)])
        await until(lambda: "a-1" in handler.running)
        await done.submit(lane, 1, [ev("b-1", 0), ev("c-1", 0)])  # a unit queued behind

        async def take_out(stream: str) -> None:
            await sink.take_out(stream)
            taken_out.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(take_out, "c-1")
            await settle()
            assert not taken_out.is_set()  # c-1 waits in the queued unit
            gate.set()
        await lane.wait_empty()
        await done.submit(lane, 2, [ev("c-1", 1), ev("b-1", 1)])
        await lane.wait_empty()

    assert handler.delivered("b-1") == [0, 1]
    assert sink.held_streams == {"c-1"}
    assert [call.get("c-1") for call in handler.calls if "c-1" in call] == [[0]]
    assert done.order == [0, 1, 2]
