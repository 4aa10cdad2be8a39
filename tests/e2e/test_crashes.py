"""`projector run` as a process that crashes: killed with SIGKILL mid-catch-up and restarted, it
still delivers every event at least once and in stream order; and a failing handler, parked by
default or stopping the run with ``--on-failure stop``."""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import anyio

from tests.support.cli import BALANCES, ProjectorProcess, calls, run_projector
from tests.support.failures import append, contiguous
from tests.support.projecting import write_events
from tests.support.waiting import wait_until

GROUP = "crashy"
BAD = "account-bad"


def _run_args(*more: str) -> list[str]:
    return ["run", BALANCES, "--group", GROUP, "--category", "account", *more]


def projector(
    workdir: Path, url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_projector(workdir, *args, env={"PROJECTOR_DATABASE_URL": url, **(env or {})})


def handled(workdir: Path) -> set[tuple[str, int]]:
    """What every `projector` run in ``workdir`` handled, as (stream, position)."""
    return {(stream, p) for stream, events in _calls(workdir) for p, _ in events}


def _calls(workdir: Path) -> list[tuple[str, list[tuple[int, int]]]]:
    """The calls of every run in ``workdir``, in the order they ran: the killed lives, then the
    run to the end."""
    lives = sorted(workdir.glob("life*.handled"), key=lambda path: int(path.stem[4:]))
    return [call for path in [*lives, workdir / "handled"] for call in calls(path)]


def test_a_catch_up_killed_at_random_points_still_delivers_every_event_in_stream_order(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    streams = {f"account-{i}": 10 for i in range(300)}
    anyio.run(write_events, own_store_url, streams)
    rnd = random.Random(20240611)
    flags = ("--batch-size", "100", "--log-level", "WARNING")
    env = {"PROJECTOR_DATABASE_URL": own_store_url, "HANDLER_DELAY": "0.02"}

    lives = [0]
    for life in range(4):
        process = ProjectorProcess.start(
            tmp_path, f"life{life}", *_run_args(*flags, "--checkpoint-interval", "0.2"), env=env
        )
        processes.append(process)
        # Killed at a random point once it is under way (however long it took to start).
        wait_until(partial(_called, process), within=30, what="projector made progress")
        time.sleep(rnd.uniform(0.0, 0.5))
        assert process.kill() == -9, process.stderr
        lives.append(len(_calls(tmp_path)))
    # The default interval: the last run's own end should not land on a periodic commit
    # (see the integration test of a catch-up that ends during a checkpoint commit).
    final = run_projector(tmp_path, *_run_args(*flags, "--until-caught-up"), env=env)

    assert final.returncode == 0, final.stderr
    assert lives[-1] < len(_calls(tmp_path)), "the catch-up was over before the last kill"
    expected = {(name, p) for name, count in streams.items() for p in range(count)}
    assert handled(tmp_path) == expected
    first_deliveries: dict[str, list[int]] = defaultdict(list)
    for stream, events in _calls(tmp_path):
        positions = [p for p, _ in events]
        assert contiguous(positions), (stream, positions)
        first_deliveries[stream].extend(p for p in positions if p not in first_deliveries[stream])
    assert first_deliveries == {name: list(range(count)) for name, count in streams.items()}


def _called(process: ProjectorProcess) -> bool:
    """Whether ``process``'s handler returned from a call yet (it must still run)."""
    assert process.running(), f"projector exited with {process.popen.returncode}"
    return process.calls() != []


def test_on_failure_stop_exits_1_with_one_error_line_naming_the_stream(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(20)})
    anyio.run(append, own_store_url, BAD, 2)

    result = projector(
        tmp_path,
        own_store_url,
        *_run_args("--until-caught-up", "--on-failure", "stop"),
        *("--retry-base", "0.01", "--retry-max-attempts", "2"),
        env={"FAILING_STREAMS": BAD},
    )

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert f"stream '{BAD}' at position 0" in errors[0]
    assert "cannot project account-bad" in errors[0]
    assert (BAD, 0) not in handled(tmp_path)


def test_a_failing_stream_is_parked_the_run_completes_exit_3_and_failing_list_names_it(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(20)})
    anyio.run(append, own_store_url, BAD, 2)

    run = projector(
        tmp_path,
        own_store_url,
        *_run_args("--until-caught-up", "--retry-base", "0.01", "--retry-max-attempts", "2"),
        env={"FAILING_STREAMS": BAD},
    )
    listed = projector(tmp_path, own_store_url, "failing", "list", "--group", GROUP, "--json")
    retried = projector(tmp_path, own_store_url, "failing", "retry", "--group", GROUP, BAD)
    unknown = projector(tmp_path, own_store_url, "failing", "retry", "--group", GROUP, "account-0")

    # Caught up, except for the parked stream: exit 3, naming it.
    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        f"error: caught up, but 1 stream(s) of group {GROUP} are parked, their events not "
        f"handled: {BAD}"
    )
    assert "action=stream_parked" in run.stderr
    assert {(f"account-{i}", p) for i in range(20) for p in (0, 1)} == handled(tmp_path)
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["stream_name"], row["state"], row["position"], row["attempts"]) == (
        BAD,
        "parked",
        0,
        2,
    )
    assert row["error"] == f"RuntimeError: cannot project {BAD}"
    assert retried.returncode == 0, retried.stderr
    assert "retry requested for 1 stream(s)" in retried.stdout
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: stream 'account-0' is not held")
