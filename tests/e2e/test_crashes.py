"""`projector run` as a process that crashes: killed with SIGKILL mid-catch-up and restarted, it
still delivers every event at least once and in stream order; and a failing handler, parked by
default or stopping the run with ``--on-failure stop``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from tests.support.failures import append, contiguous
from tests.support.projecting import write_events
from tests.support.waiting import wait_until

PROJECTOR = [sys.executable, "-m", "projector"]
GROUP = "crashy"
BAD = "account-bad"

HANDLERS = """
import os
import anyio
from projector import Event, Projection

crashy = Projection("crashy")

@crashy.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    await anyio.sleep(float(os.environ.get("HANDLER_DELAY", "0")))
    if stream_name in os.environ.get("FAILING_STREAMS", "").split(","):
        raise RuntimeError(f"cannot project {stream_name}")
    positions = [event.position for event in events]
    # One write per file and call: a kill lands between lines, not inside one.
    with open(os.environ["HANDLED_FILE"], "a") as out:
        out.write("".join(f"{stream_name} {p}\\n" for p in positions))
    with open(os.environ["CALLS_FILE"], "a") as out:
        out.write(f"{stream_name} {' '.join(map(str, positions))}\\n")
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "crash_projections.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _env(workdir: Path, url: str, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "PROJECTOR_DATABASE_URL": url,
        "HANDLED_FILE": str(workdir / "handled.txt"),
        "CALLS_FILE": str(workdir / "calls.txt"),
        **more,
    }


def _run_args(*more: str) -> list[str]:
    return ["run", "crash_projections:crashy", "--category", "account", *more]


def projector(
    workdir: Path, url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROJECTOR, *args],
        cwd=workdir,
        env=_env(workdir, url, **(env or {})),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def handled(workdir: Path) -> set[tuple[str, int]]:
    path = workdir / "handled.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(stream, int(position)) for stream, position in (line.split() for line in lines)}


def calls(workdir: Path) -> list[tuple[str, list[int]]]:
    path = workdir / "calls.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(line.split()[0], [int(p) for p in line.split()[1:]]) for line in lines]


def _more_calls_than(workdir: Path, count: int) -> bool:
    return len(calls(workdir)) > count


def progressing(
    condition: Callable[[], bool], process: subprocess.Popen[bytes]
) -> Callable[[], bool]:
    """``condition``, checked only while ``process`` runs (a run that exited fails the test)."""

    def check() -> bool:
        assert process.poll() is None, f"projector exited with {process.returncode}"
        return condition()

    return check


def test_a_catch_up_killed_at_random_points_still_delivers_every_event_in_stream_order(
    workdir: Path, own_store_url: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    streams = {f"account-{i}": 10 for i in range(300)}
    anyio.run(write_events, own_store_url, streams)
    rnd = random.Random(20240611)
    flags = ("--batch-size", "100", "--log-level", "WARNING")
    env = _env(workdir, own_store_url, HANDLER_DELAY="0.02")

    lives = [0]
    for _ in range(4):
        with (workdir / "killed.log").open("ab") as log:
            process = subprocess.Popen(
                [*PROJECTOR, *_run_args(*flags, "--checkpoint-interval", "0.2")],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=log,
            )
        processes.append(process)
        # Killed at a random point once it is under way (however long it took to start).
        wait_until(
            progressing(partial(_more_calls_than, workdir, lives[-1]), process),
            within=30,
            what="projector made progress",
        )
        time.sleep(rnd.uniform(0.0, 0.5))
        process.kill()
        assert process.wait(timeout=10) == -9, (workdir / "killed.log").read_text()
        lives.append(len(calls(workdir)))
    # The default interval: the last run's own end should not land on a periodic commit
    # (see the integration test of a catch-up that ends during a checkpoint commit).
    final = subprocess.run(
        [*PROJECTOR, *_run_args(*flags, "--until-caught-up")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert final.returncode == 0, final.stderr
    assert lives[-1] < len(calls(workdir)), "the catch-up was over before the last kill"
    expected = {(name, p) for name, count in streams.items() for p in range(count)}
    assert handled(workdir) == expected
    first_deliveries: dict[str, list[int]] = defaultdict(list)
    for stream, positions in calls(workdir):
        assert contiguous(positions), (stream, positions)
        first_deliveries[stream].extend(p for p in positions if p not in first_deliveries[stream])
    assert first_deliveries == {name: list(range(count)) for name, count in streams.items()}


def test_on_failure_stop_exits_1_with_one_error_line_naming_the_stream(
    workdir: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(20)})
    anyio.run(append, own_store_url, BAD, 2)

    result = projector(
        workdir,
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
    assert (BAD, 0) not in handled(workdir)


def test_a_failing_stream_is_parked_the_run_completes_exit_3_and_parked_list_names_it(
    workdir: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(20)})
    anyio.run(append, own_store_url, BAD, 2)

    run = projector(
        workdir,
        own_store_url,
        *_run_args("--until-caught-up", "--retry-base", "0.01", "--retry-max-attempts", "2"),
        env={"FAILING_STREAMS": BAD},
    )
    listed = projector(workdir, own_store_url, "parked", "list", "--group", GROUP, "--json")
    retried = projector(workdir, own_store_url, "parked", "retry", "--group", GROUP, BAD)
    unknown = projector(workdir, own_store_url, "parked", "retry", "--group", GROUP, "account-0")

    # Caught up, except for the parked stream: exit 3, naming it.
    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines()[-1].startswith(
        f"error: caught up, but 1 stream(s) of group {GROUP} are parked, their events not "
        f"handled: {BAD}"
    )
    assert "action=stream_parked" in run.stderr
    assert {(f"account-{i}", p) for i in range(20) for p in (0, 1)} == handled(workdir)
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["stream_name"], row["position"], row["attempts"]) == (BAD, 0, 2)
    assert row["error"] == f"RuntimeError: cannot project {BAD}"
    assert retried.returncode == 0, retried.stderr
    assert "retry requested for 1 stream(s)" in retried.stdout
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("error: stream 'account-0' is not parked")
