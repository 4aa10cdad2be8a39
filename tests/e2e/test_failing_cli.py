"""`projector failing` as an operator uses it with no runner up: `list` shows a parked stream
with its state and owner, `retry` and `skip` say that no runner is up and that the next run
acts on the request, and `run --until-caught-up` does act on it before it exits (issue 23,
item 3). `projector parked` is the old name, still accepted, and says so."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import anyio
import pytest

from tests.support.failures import append
from tests.support.groups import run_projector

# The handler fails for the streams listed in the file "failing", one name a line: the test
# fixes the handler by emptying it, as a deploy would.
HANDLERS = """
from pathlib import Path
from projector import Event, Projection

shop = Projection("shop")

@shop.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    if stream_name in Path("failing").read_text().split():
        raise ValueError("cannot handle this order")
    with open("handled", "a") as out:
        for event in events:
            out.write(f"{stream_name} {event.position}\\n")
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "shop_projections.py").write_text(textwrap.dedent(HANDLERS))
    (tmp_path / "failing").write_text("order-bad\n")
    return tmp_path


def catch_up(workdir: Path, url: str) -> tuple[int, str]:
    run = run_projector(
        workdir,
        *("run", "shop_projections:shop", "--category", "order", "--until-caught-up"),
        *("--retry-max-attempts", "1", "--log-level", "ERROR", "--database-url", url),
    )
    return run.returncode, run.stderr


def handled(workdir: Path, stream: str) -> list[int]:
    path = workdir / "handled"
    lines = path.read_text().splitlines() if path.exists() else []
    return [int(p) for s, p in (line.split() for line in lines) if s == stream]


def test_a_retry_requested_while_no_runner_runs_is_acted_on_by_the_next_catch_up(
    workdir: Path, own_store_url: str
) -> None:
    url = ("--database-url", own_store_url)
    anyio.run(append, own_store_url, "order-1", 2)
    anyio.run(append, own_store_url, "order-bad", 3)
    code, stderr = catch_up(workdir, own_store_url)
    assert code == 3, stderr

    listed = run_projector(workdir, "failing", "list", "--group", "shop", "--json", *url)
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["stream_name"], row["state"], row["position"]) == ("order-bad", "parked", 0)
    assert (row["member"], row["name"]) == (0, "shop")
    assert row["next_attempt_at"] is None
    assert row["error"] == "ValueError: cannot handle this order"

    (workdir / "failing").write_text("")
    retry = run_projector(workdir, "failing", "retry", "order-bad", "--group", "shop", *url)
    assert retry.returncode == 0, retry.stderr
    assert "no runner of group shop is running: the next `projector run`" in retry.stdout

    code, stderr = catch_up(workdir, own_store_url)
    assert code == 0, stderr
    assert handled(workdir, "order-bad") == [0, 1, 2]
    listed = run_projector(workdir, "failing", "list", "--group", "shop", "--json", *url)
    assert listed.stdout == ""


def test_skipping_a_streams_only_event_while_no_runner_runs_unparks_it_at_the_next_run(
    workdir: Path, own_store_url: str
) -> None:
    url = ("--database-url", own_store_url)
    anyio.run(append, own_store_url, "order-bad", 1)
    code, stderr = catch_up(workdir, own_store_url)
    assert code == 3, stderr
    old = run_projector(workdir, "parked", "list", "--group", "shop", "--json", *url)
    assert "`projector parked` is now `projector failing`" in old.stderr
    [row] = [json.loads(line) for line in old.stdout.splitlines()]

    skip = run_projector(
        workdir, "failing", "skip", "order-bad", row["event_id"], "--group", "shop", *url
    )
    assert skip.returncode == 0, skip.stderr
    assert "replay from position 1" in skip.stdout
    assert "the next `projector run` of the group replays it" in skip.stdout

    code, stderr = catch_up(workdir, own_store_url)
    assert code == 0, stderr
    assert handled(workdir, "order-bad") == []
    listed = run_projector(workdir, "failing", "list", "--group", "shop", *url)
    assert "order-bad" not in listed.stdout
