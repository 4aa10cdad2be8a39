"""A batch call that fails is split down to the failing streams, each of which gets its own
error as its outcome while the others keep theirs; errors of no one stream go to all of them
without splitting; a replay calls a batch handler one stream at a time.

No database: the batch calls are a scripted coroutine that records what it was given.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import psycopg
import pytest

from projector.model.events import Event
from projector.model.failures import RetryAfter
from projector.model.projection import Spans
from projector.runtime.batching import one_stream, split_on_failure
from tests.support.sink import evs

pytestmark = pytest.mark.anyio


@dataclass
class BatchCalls:
    """A batch call that handles every span (the last position + 1, or ``positions[name]``),
    except that it raises ``errors[name]`` for a batch holding stream ``name``."""

    errors: dict[str, Exception] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)
    batches: list[list[str]] = field(default_factory=list)

    async def run(self, spans: Spans) -> dict[str, int]:
        self.batches.append(sorted(spans))
        for name, error in self.errors.items():
            if name in spans:
                raise error
        return {
            name: self.positions.get(name, events[-1].position + 1)
            for name, events in spans.items()
        }


def spans_of(count: int) -> dict[str, list[Event]]:
    return {f"account-{i}": evs(f"account-{i}", [0, 1]) for i in range(count)}


async def test_a_call_that_succeeds_is_one_call_with_each_streams_own_position() -> None:
    calls = BatchCalls(positions={"account-2": 1})
    spans = spans_of(3)

    outcomes = await split_on_failure(calls.run, group="g")(spans)

    assert calls.batches == [sorted(spans)]
    assert outcomes == {"account-0": 2, "account-1": 2, "account-2": 1}


async def test_one_failing_stream_fails_alone_and_the_others_are_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    poison = ValueError("poison")
    calls = BatchCalls(errors={"account-5": poison})
    caplog.set_level(logging.INFO, logger="projector.runtime.batching")

    outcomes = await split_on_failure(calls.run, group="g")(spans_of(16))

    assert outcomes.pop("account-5") is poison
    assert set(outcomes.values()) == {2}
    assert len(outcomes) == 15
    assert ["account-5"] in calls.batches
    assert len(calls.batches) <= 2 * 4 + 1  # halving: about 2 log2(16) calls
    splits = [r for r in caplog.records if getattr(r, "action", None) == "batch_split"]
    assert [r.streams for r in splits] == [16]  # type: ignore[attr-defined]


async def test_two_failing_streams_each_get_their_own_error() -> None:
    first, second = ValueError("first"), KeyError("second")
    calls = BatchCalls(errors={"account-1": first, "account-6": second})

    outcomes = await split_on_failure(calls.run, group="g")(spans_of(8))

    assert outcomes["account-1"] is first
    assert outcomes["account-6"] is second
    assert {name: outcome for name, outcome in outcomes.items() if isinstance(outcome, int)} == {
        name: 2 for name in spans_of(8) if name not in {"account-1", "account-6"}
    }


@pytest.mark.parametrize(
    "error",
    [RetryAfter(1.0), psycopg.OperationalError("the connection is lost")],
    ids=["retry-after", "connection-lost"],
)
async def test_an_error_of_no_one_stream_goes_to_every_stream_without_splitting(
    error: Exception,
) -> None:
    spans = spans_of(8)
    calls = BatchCalls(errors=dict.fromkeys(spans, error))

    outcomes = await split_on_failure(calls.run, group="g")(spans)

    assert len(calls.batches) == 1
    assert outcomes == dict.fromkeys(spans, error)


async def test_a_replay_calls_the_batch_handler_with_one_stream_and_raises_its_error() -> None:
    poison = ValueError("poison")
    calls = BatchCalls(errors={"account-1": poison})
    handle = one_stream(split_on_failure(calls.run, group="g"))

    assert await handle("account-0", evs("account-0", [3, 4])) == 5
    with pytest.raises(ValueError, match="poison"):
        await handle("account-1", evs("account-1", [0]))
    assert calls.batches == [["account-0"], ["account-1"]]
