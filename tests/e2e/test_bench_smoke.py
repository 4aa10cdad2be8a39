"""The benchmarks at a tiny size, as a process: they keep working, each handling exactly the
events it was given. No timing is asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.scenarios import SMOKE
from tests.support.postgres import (
    ADMIN_URL_VARIABLE,
    NoTestServerError,
    give_up,
    require_server_binaries,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "catchup",
    "catchup-decode",
    "catchup-few-streams",
    "catchup-distinct-streams",
    "catchup-batch",
    "catchup-batch-few-streams",
    "catchup-batch-distinct-streams",
    "upsert",
    "transactional",
    "transactional-batch",
    "transactional-batch-vs-batch",
    "batch-statements",
    "tail-sleep-0.1",
    "tail-sleep-1",
    "tail-notify-sleep-1",
    "group-member-0-of-4",
    "failing-catchup",
    "failing-tail",
    "failing-held-memory",
    "startup",
    "catchup-scale",
    "tail-notify-scale",
    "elastic-join",
    "elastic-rebalance",
    "elastic-catchup",
    "takeover",
    "rebuild",
}
# Its baseline is projector on the smaller main dataset: the counts differ on purpose.
OTHER_WORK = {"catchup-scale"}
# Their writer may fall behind its schedule on a busy machine, which they note.
TAILS = {
    "tail-sleep-0.1",
    "tail-sleep-1",
    "tail-notify-sleep-1",
    "tail-notify-scale",
    "failing-tail",
}
GROUP = "group-member-0-of-4"  # handles its member's share of the dataset


@pytest.fixture
def bench_env() -> dict[str, str]:
    """The bench on the tests' server when one is given, else on a throwaway cluster of its own."""
    env = dict(os.environ)
    if os.environ.get(ADMIN_URL_VARIABLE):
        env["PROJECTOR_BENCH_DATABASE_URL"] = os.environ[ADMIN_URL_VARIABLE]
    else:
        try:
            require_server_binaries()
        except NoTestServerError as exc:
            give_up(str(exc))
    return env


def test_bench_smoke_prints_a_row_and_a_json_line_per_scenario(bench_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--scale"],
        cwd=ROOT,
        env=bench_env,
        capture_output=True,
        text=True,
        timeout=300,  # the elastic runs start a dozen member processes
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert {record["scenario"] for record in records} == SCENARIOS
    assert len(records) == len(SCENARIOS)
    table_rows = {line.split()[0] for line in lines if line and not line.startswith(("{", " "))}
    assert table_rows >= SCENARIOS
    for record in records:
        if record["scenario"] == "startup":  # times of commands, no events
            assert record["seconds"]["projector --help"] > 0
            continue
        if record["scenario"].startswith("elastic-"):
            check_elastic(record)
            continue
        if record["scenario"] == "takeover":
            check_takeover(record)
            continue
        if record["scenario"] == "rebuild":
            check_rebuild(record)
            continue
        if record["scenario"].startswith("failing-"):
            check_failing(record)
            continue
        projector = record["projector"]
        if record["dataset"] is not None and record["scenario"] != GROUP:
            assert projector["events"] == record["dataset"]["events"], record["scenario"]
        assert projector["events"] > 0
        assert projector["events_per_s"] > 0
        assert projector["peak_rss_mb"] > 0
        assert record["notes"] == [] or record["scenario"] in TAILS
        if record["target"] is not None:
            if record["scenario"] not in OTHER_WORK:
                assert record["baseline"]["events"] == projector["events"]
            assert isinstance(record["met"], bool)
        if record["scenario"] in TAILS:
            assert projector["p50_ms"] <= projector["p99_ms"]
        if record["scenario"].startswith("catchup"):
            assert projector["cpu_us_per_event"] > 0
        if record["scenario"] == "transactional-batch-vs-batch":
            check_read_models(record)
    [group] = [record for record in records if record["scenario"] == GROUP]
    # Member 0's share of the dataset, as Message DB's own group read counts it.
    assert 0 < group["projector"]["events"] < group["dataset"]["events"]
    by_name = {record["scenario"]: record for record in records}
    for distinct in ("catchup-distinct-streams", "catchup-batch-distinct-streams"):
        assert "peak_rss_growth_mb" in by_name[distinct]["projector"]


def check_read_models(record: dict[str, Any]) -> None:
    """The exactly-once batch with the positions in the read model's rows, the at-least-once
    batch and the batch with projector's stream positions wrote the same rows: one per
    stream, every event counted once."""
    dataset = record["dataset"]
    (reference,) = record["references"].values()
    sides = (record["projector"], record["baseline"], reference)
    assert len({side["read_model_digest"] for side in sides}) == 1
    for side in sides:
        assert side["events"] == dataset["events"]
        assert side["read_model_rows"] == dataset["streams"]
        assert side["read_model_events"] == dataset["events"]
    assert reference["ratio"] > 0


def check_rebuild(record: dict[str, Any]) -> None:
    """The rebuild record: a catch-up before and after each rebuild, each handling the whole
    dataset and whatever the writer added by then, and a rate for both sides (no target at
    this size)."""
    assert record["rebuilds"]
    assert len(record["catchups"]) == 2 * len(record["rebuilds"])
    for measure in record["catchups"] + record["rebuilds"]:
        assert measure["events"] >= SMOKE.upsert_events
        assert measure["seconds"] > 0
    assert record["ratio"] > 0


def check_failing(record: dict[str, Any]) -> None:
    """The failing-stream records: each side counted every healthy event and none of the
    failing stream's; with it failing, it was held (still retrying) at its first event, and the
    same run with it healthy handled it and held nothing."""
    failing, healthy = record["projector"], record["baseline"]
    stream = failing["failing_stream"]
    assert (failing["fails"], healthy["fails"]) == (True, False)
    assert failing["failing_stream_events"] == 0
    assert failing["failed_calls"] >= 1
    assert failing["held"] == [[stream, "retrying", 0]]
    assert healthy["held"] == []
    assert healthy["failing_stream_events"] > 0
    if record["scenario"] == "failing-tail":
        for side in (failing, healthy):
            assert side["events"] == side["healthy_written"] > 0
            assert side["p50_ms"] <= side["p99_ms"] <= side["max_ms"]
        return
    # Seeded round-robin: the failing stream (stream 0) has every `streams`-th event from the
    # first one on; every other event is a healthy one.
    dataset = record["dataset"]
    expected = dataset["events"] - -(-dataset["events"] // dataset["streams"])
    for side in (failing, healthy):
        assert side["events"] == side["expected"] == expected
    if record["scenario"] == "failing-held-memory":
        growth = failing["peak_rss_mb"] - healthy["peak_rss_mb"]
        assert failing["peak_rss_growth_mb"] == round(growth, 1)


def check_elastic(record: dict[str, Any]) -> None:
    """The elastic records: figures of real joins, and a graceful rebalance that neither
    repeats nor misses an event (what the fault suite checks at length)."""
    assert record["notes"] == []
    if record["scenario"] == "elastic-join":
        assert record["joins"]
        for join in record["joins"]:
            assert 0 < join["to_acquired"] <= join["to_first_event"]
    elif record["scenario"] == "elastic-rebalance":
        # Three counts from three places: the writer's, the store's, and the distinct events
        # the recorded calls were given (the store's, less those missed).
        assert record["written"] > 0
        assert record["stored"] == record["written"]
        assert (record["redelivered"], record["missed"]) == (0, 0)
    else:
        assert [run["members"] for run in record["runs"]] == [1, 2, 4]
        assert [run["events"] for run in record["runs"]] == [SMOKE.elastic_events] * 3
        assert all(run["events_per_s"] > 0 for run in record["runs"])


def check_takeover(record: dict[str, Any]) -> None:
    """The takeover record: one round's figures, and nothing missed across the kills."""
    assert record["notes"] == []
    assert len(record["rounds"]) == SMOKE.takeover_runs
    assert all(r["cold_s"] > 0 and r["takeover_s"] > 0 for r in record["rounds"])
    assert record["written"] > 0
    assert record["missed"] == 0
