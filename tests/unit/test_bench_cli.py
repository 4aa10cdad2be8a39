"""`python -m bench ... --only NAMES` runs just the named scenarios of a command."""

from __future__ import annotations

import pytest

from bench.cli import _only
from bench.jobs import Job
from bench.scenarios import Scenario

PLAN = [Scenario(name, name, Job("read_loop", url="", category="c")) for name in ("a", "b", "c")]


def test_only_keeps_the_named_scenarios_in_the_plans_order() -> None:
    assert [s.name for s in _only(PLAN, "c, a")] == ["a", "c"]
    assert _only(PLAN, None) == PLAN


def test_an_unknown_name_is_refused_with_the_names_to_pick_from() -> None:
    with pytest.raises(SystemExit, match="no scenario x in this command: pick from a, b, c"):
        _only(PLAN, "a,x")
