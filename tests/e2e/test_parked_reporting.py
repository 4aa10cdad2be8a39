"""A parked stream is never reported as success: `run --until-caught-up` exits 3 naming it,
`wait` for one of its events exits 3 saying it is parked, and `status` counts it."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from tests.support.cli import BALANCES, run_projector
from tests.support.failures import append


def test_a_parked_stream_is_reported_by_run_wait_and_status(
    tmp_path: Path, own_store_url: str
) -> None:
    for name in ("order-1", "order-2"):
        anyio.run(append, own_store_url, name, 2)
    bad = anyio.run(append, own_store_url, "order-bad", 2)
    url = ("--database-url", own_store_url)

    run = run_projector(
        tmp_path,
        *("run", BALANCES, "--group", "shop", "--category", "order", "--until-caught-up"),
        *("--retry-max-attempts", "1", "--log-level", "ERROR", *url),
        env={"FAILING_STREAMS": "order-bad"},
    )
    wait = run_projector(tmp_path, "wait", "--group", "shop", "--position", str(bad[0]), *url)
    status = run_projector(tmp_path, "status", "--json", *url)

    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        "error: caught up, but 1 stream(s) of group shop are parked, their events not handled: "
        "order-bad"
    )
    assert wait.returncode == 3, wait.stderr
    assert "has parked order-bad at position 0" in wait.stderr
    assert "has handled" not in wait.stdout
    assert status.returncode == 0, status.stderr
    [member] = [json.loads(line) for line in status.stdout.splitlines()]
    assert member["parked"] == 1
    assert member["oldest_parked_at"] is not None
