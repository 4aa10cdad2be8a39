"""`projector failing` as an operator uses it with no runner up: `list` shows a parked stream
with its state and owner, `retry` and `skip` say that no runner is up and that the next run
acts on the request, and `run --until-caught-up` does act on it before it exits (issue 23,
item 3). `projector parked` is the old name, still accepted, and says so."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from tests.support.cli import BALANCES, handled, run_projector
from tests.support.failures import append


def catch_up(workdir: Path, url: str, *, failing: str = "") -> tuple[int, str]:
    """A run to the head in which the streams named in ``failing`` cannot be handled (the
    test fixes the handler by naming none, as a deploy would)."""
    run = run_projector(
        workdir,
        *("run", BALANCES, "--group", "shop", "--category", "order", "--until-caught-up"),
        *("--retry-max-attempts", "1", "--log-level", "ERROR", "--database-url", url),
        env={"FAILING_STREAMS": failing},
    )
    return run.returncode, run.stderr


def handled_of(workdir: Path, stream: str) -> list[int]:
    return [p for s, p, _ in handled(workdir / "handled") if s == stream]


def test_a_retry_requested_while_no_runner_runs_is_acted_on_by_the_next_catch_up(
    tmp_path: Path, own_store_url: str
) -> None:
    url = ("--database-url", own_store_url)
    anyio.run(append, own_store_url, "order-1", 2)
    anyio.run(append, own_store_url, "order-bad", 3)
    code, stderr = catch_up(tmp_path, own_store_url, failing="order-bad")
    assert code == 3, stderr

    listed = run_projector(tmp_path, "failing", "list", "--group", "shop", "--json", *url)
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["stream_name"], row["state"], row["position"]) == ("order-bad", "parked", 0)
    assert (row["member"], row["name"]) == (0, "shop")
    assert row["next_attempt_at"] is None
    assert row["error"] == "RuntimeError: cannot project order-bad"

    retry = run_projector(tmp_path, "failing", "retry", "order-bad", "--group", "shop", *url)
    assert retry.returncode == 0, retry.stderr
    assert "no runner of group shop is running: the next `projector run`" in retry.stdout

    code, stderr = catch_up(tmp_path, own_store_url)
    assert code == 0, stderr
    assert handled_of(tmp_path, "order-bad") == [0, 1, 2]
    listed = run_projector(tmp_path, "failing", "list", "--group", "shop", "--json", *url)
    assert listed.stdout == ""


def test_skipping_a_streams_only_event_while_no_runner_runs_unparks_it_at_the_next_run(
    tmp_path: Path, own_store_url: str
) -> None:
    url = ("--database-url", own_store_url)
    anyio.run(append, own_store_url, "order-bad", 1)
    code, stderr = catch_up(tmp_path, own_store_url, failing="order-bad")
    assert code == 3, stderr
    old = run_projector(tmp_path, "parked", "list", "--group", "shop", "--json", *url)
    assert "`projector parked` is now `projector failing`" in old.stderr
    [row] = [json.loads(line) for line in old.stdout.splitlines()]

    skip = run_projector(
        tmp_path, "failing", "skip", "order-bad", row["event_id"], "--group", "shop", *url
    )
    assert skip.returncode == 0, skip.stderr
    assert "replay from position 1" in skip.stdout
    assert "the next `projector run` of the group replays it" in skip.stdout

    code, stderr = catch_up(tmp_path, own_store_url)
    assert code == 0, stderr
    assert handled_of(tmp_path, "order-bad") == []
    listed = run_projector(tmp_path, "failing", "list", "--group", "shop", *url)
    assert "order-bad" not in listed.stdout
