"""`python -m bench ... --only NAMES` runs just the named scenarios of a command; the failing
command's memory comparison."""

from __future__ import annotations

import pytest

from bench import failing
from bench.cli import _only
from bench.jobs import Job
from bench.scenarios import Outcome, Scenario
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
