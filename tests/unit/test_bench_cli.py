"""`python -m bench ... --only NAMES` runs just the named scenarios of a command; the memory
comparisons; how a scenario's sides and repeated references take turns."""

from __future__ import annotations

from typing import Any

import pytest

from bench import failing
from bench.cli import _compare_memory, _only
from bench.jobs import Job
from bench.scenarios import Measurer, Outcome, Scenario
from bench.seed import Dataset

PLAN = [Scenario(name, name, Job("read_loop", url="", category="c")) for name in ("a", "b", "c")]


def test_only_keeps_the_named_scenarios_in_the_plans_order() -> None:
    assert [s.name for s in _only(PLAN, "c, a")] == ["a", "c"]
    assert _only(PLAN, None) == PLAN


def test_an_unknown_name_is_refused_with_the_names_to_pick_from() -> None:
    with pytest.raises(SystemExit, match="no scenario x in this command: pick from a, b, c"):
        _only(PLAN, "a,x")


def memory_outcome(held_mb: float, healthy_mb: float) -> Outcome:
    held = Dataset("bench_held", 200_000, 2)
    job = Job("failing_catchup", url="", category=held.category)
    scenario = Scenario(failing.MEMORY, "", job, job, dataset=held)
    return Outcome(scenario, {"peak_rss_mb": held_mb}, {"peak_rss_mb": healthy_mb})


def test_a_held_streams_memory_is_its_peak_rss_over_the_run_with_no_failing_stream() -> None:
    flat, grown = memory_outcome(61.0, 60.2), memory_outcome(95.0, 60.0)

    failing.compare_memory([flat, grown])

    assert (flat.projector["peak_rss_growth_mb"], flat.notes) == (0.8, [])
    assert grown.notes == ["peak RSS grew by 35 MB with a stream held for 100,000 of its events"]


def catchup_outcome(name: str, streams: int, peak_mb: float) -> Outcome:
    dataset = Dataset("bench", 1_000_000, streams)
    job = Job("projector", url="", category="bench", handler="noop_batch")
    return Outcome(Scenario(name, "", job, dataset=dataset), {"peak_rss_mb": peak_mb})


def test_a_batch_catchups_peak_memory_is_compared_from_1k_to_1m_streams() -> None:
    few = catchup_outcome("catchup-batch-few-streams", 1_000, 60.0)
    distinct = catchup_outcome("catchup-batch-distinct-streams", 1_000_000, 95.0)

    _compare_memory([few, distinct])

    assert distinct.projector["peak_rss_growth_mb"] == 35.0
    assert distinct.notes == ["peak RSS grew by 35 MB from 1,000 to 1,000,000 streams"]


def test_repeated_references_take_turns_with_both_sides_and_report_their_medians(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sides = {kind: Job(kind, url="", category="c") for kind in ("p", "b", "r")}
    scenario = Scenario(
        "s", "", sides["p"], sides["b"], references=(("r", sides["r"]),), repeat_references=True
    )
    rates = {"p": iter([3, 1, 2]), "b": iter([5, 6, 4]), "r": iter([9, 7, 8])}
    order: list[str] = []

    def measure(job: Job, profile_name: str | None = None) -> dict[str, Any]:
        order.append(job.kind)
        rate = next(rates[job.kind])
        return {"events": 10, "events_per_s": rate, "read_model_digest": "same"}

    measurer = Measurer(repeat=3, timeout=1.0, profile_dir=None, tail_rate=1.0)
    monkeypatch.setattr(measurer, "measure", measure)
    monkeypatch.setattr(measurer, "_warm_up", lambda job: None)

    outcome = measurer.run(scenario)

    assert order == ["r", "b", "p", "p", "b", "r", "r", "b", "p"]
    assert outcome.baseline is not None
    assert (outcome.projector["events_per_s"], outcome.baseline["events_per_s"]) == (2, 5)
    assert outcome.references["r"]["runs_events_per_s"] == [9, 7, 8]
    assert outcome.ratio_of("r") == 8 / 5
    assert outcome.ratio == 2 / 5
    assert outcome.notes == []


def test_a_reference_that_wrote_other_rows_is_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    job = Job("p", url="", category="c")
    scenario = Scenario("s", "", job, job, references=(("stream_positions", job),))
    digests = iter(["a", "a", "b"])

    def measure(job: Job, profile_name: str | None = None) -> dict[str, Any]:
        return {"events": 10, "events_per_s": 1, "read_model_digest": next(digests)}

    measurer = Measurer(repeat=1, timeout=1.0, profile_dir=None, tail_rate=1.0)
    monkeypatch.setattr(measurer, "measure", measure)
    monkeypatch.setattr(measurer, "_warm_up", lambda job: None)

    outcome = measurer.run(scenario)

    assert outcome.notes == ["the read models differ between projector and 'stream_positions'"]
