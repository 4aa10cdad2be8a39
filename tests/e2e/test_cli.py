"""The `projector` command as a user runs it: a separate process, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import psycopg
import pytest

from tests.support.projecting import write_events
from tests.support.waiting import logged

PROJECTOR = [sys.executable, "-m", "projector"]

HANDLERS = """
import anyio, os
from projector import Event, Projection

balances = Projection("balances")

@balances.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    await anyio.sleep(float(os.environ.get("HANDLER_DELAY", "0")))
    with open(os.environ["HANDLED_FILE"], "a") as out:
        for event in events:
            out.write(f"{stream_name} {event.position} {event.global_position}\\n")

not_a_projection = 42
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "shop_projections.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path


def projector(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PROJECTOR, *args],
        cwd=workdir,
        env={**os.environ, "HANDLED_FILE": str(workdir / "handled.txt"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def handled(workdir: Path) -> list[tuple[str, int, int]]:
    path = workdir / "handled.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(s, int(p), int(g)) for s, p, g in (line.split() for line in lines)]


def committed(url: str, group: str, category: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT position FROM projector.checkpoints"
            " WHERE checkpoint_name = %s AND category = %s",
            (group, category),
        ).fetchone()
    return None if row is None else int(row[0])


def test_migrate_then_run_until_caught_up_projects_every_event(
    workdir: Path, empty_database_url: str
) -> None:
    migrated = projector(
        workdir, "migrate", "--message-store", "--database-url", empty_database_url
    )
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[0] == "message store created"
    assert "applied 0001: Checkpoints" in migrated.stdout
    assert migrated.stdout.splitlines()[-1] == (
        "projector tables created or upgraded (schema projector)"
    )
    again = projector(workdir, "migrate", "--message-store", "--database-url", empty_database_url)
    assert again.stdout == "message store already present\nprojector tables already up to date\n"
    anyio.run(write_events, empty_database_url, {f"account-{i}": 3 for i in range(30)})

    run = projector(
        workdir,
        "run",
        "shop_projections:balances",
        "--category",
        "account",
        "--until-caught-up",
        env={"PROJECTOR_DATABASE_URL": empty_database_url, "PROJECTOR_CHECKPOINT_INTERVAL": "0.1"},
    )

    assert run.returncode == 0, run.stderr
    events = handled(workdir)
    assert len(events) == 90
    for i in range(30):
        assert [p for s, p, _ in events if s == f"account-{i}"] == [0, 1, 2]
    assert committed(empty_database_url, "balances", "account") == max(g for *_, g in events) + 1
    assert "action=caught_up" in run.stderr


def test_sigterm_lets_running_handlers_finish_and_commits_the_checkpoint(
    workdir: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(200)})
    process = subprocess.Popen(
        [
            *PROJECTOR,
            "run",
            "shop_projections:balances",
            "-c",
            "account",
            "--batch-size",
            "20",
            "--checkpoint-interval",
            "3600",
            "--database-url",
            own_store_url,
        ],
        cwd=workdir,
        env={**os.environ, "HANDLED_FILE": str(workdir / "handled.txt"), "HANDLER_DELAY": "0.05"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while len(handled(workdir)) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert "psycopg" not in stderr, "a clean stop logs no warning of the driver's"
    position = committed(own_store_url, "balances", "account")
    assert position is not None, stderr
    assert position > 20, stderr
    done = {g for *_, g in handled(workdir)}
    assert set(range(1, position)) <= done, "the checkpoint passed an unhandled event"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "missing_module:balances", "-c", "account"],
            "cannot import module 'missing_module'",
        ),
        (["run", "shop_projections:nothing", "-c", "account"], "has no attribute 'nothing'"),
        (
            ["run", "shop_projections:not_a_projection", "-c", "account"],
            "not a projector.Projection",
        ),
        (
            ["run", "shop_projections:balances", "-c", "bad-name"],
            "category 'bad-name' is not valid",
        ),
        (["run", "shop_projections:balances", "-c", "account", "--group", "a b"], "group 'a b'"),
        (["run", "shop_projections:balances", "-c", "account", "--batch-size", "0"], "batch_size"),
        (["run", "shop_projections:balances", "-c", "account", "--tail-sleep", "-1"], "tail_sleep"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(
    workdir: Path, args: list[str], message: str
) -> None:
    result = projector(workdir, *args, "--database-url", "postgresql://nobody@127.0.0.1:1/none")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


NOWHERE = ("--database-url", "postgresql://nobody@127.0.0.1:1/none")
SET_CHECKPOINT = ("checkpoints", "set", "--group", "g", "--category", "c")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rebalance", "--group", "g", "--group-size", "99999999", "--dry-run"], "1<=x<=10000"),
        ([*SET_CHECKPOINT, "--member", "-1"], "0<=x"),
        ([*SET_CHECKPOINT, "--position", "99999999999999999999", "--force"], "0<=x<=922337"),
        (["wait", "--group", "g", "--position", "1", "--timeout", "-1"], "0<=x<=86400"),
        (["wait", "--group", "g", "--position", "1", "--timeout", "nan"], "not a number of"),
        (["wait", "--group", "g", "--position", "0"], "1<=x"),
        (["migrate", "--member-index", "99999999999"], "x<=10000"),
        (["group", "convert", "g", "--to-elastic", "--buckets", "0"], "1<=x<=10000"),
        (["demo", "--accounts", "0", "--yes"], "1<=x<=100000"),
        (["demo", "--events", "-5", "--yes"], "0<=x<=1000000"),
        (["run", "shop_projections:balances", "-c", "a", "--outage-limit", "inf"], "finite"),
        (["run", "shop_projections:balances", "-c", "a", "--member", "0", "--group-size", "0"], ""),
    ],
)
def test_numbers_out_of_their_range_are_refused_in_one_line_before_any_database_work(
    workdir: Path, args: list[str], message: str
) -> None:
    result = projector(workdir, *args, *NOWHERE)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


@pytest.mark.parametrize("command", [["status"], ["run", "shop_projections:balances", "-c", "a"]])
def test_a_database_url_with_an_impossible_port_is_bad_input(
    workdir: Path, command: list[str]
) -> None:
    url = "postgresql://nobody:secret@127.0.0.1:99999/none"
    result = projector(workdir, *command, "--database-url", url)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "its port '99999' is not a port: give 1 to 65535" in result.stderr
    assert "secret" not in result.stderr


def test_a_database_that_is_down_is_one_clear_line_and_nothing_written(workdir: Path) -> None:
    result = projector(
        workdir,
        "run",
        "shop_projections:balances",
        "-c",
        "account",
        "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
        "--connect-timeout",
        "2",
        "--start-wait",
        "0",  # the default waits a minute for a server that may be restarting
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot connect to the database nobody@127.0.0.1:1/none")
    assert result.stderr.count("\n") == 1
    assert not (workdir / "handled.txt").exists()


def test_a_database_without_projector_tables_names_the_migrate_command(
    workdir: Path, empty_database_url: str
) -> None:
    assert (
        projector(
            workdir, "migrate", "--message-store", "--database-url", empty_database_url
        ).returncode
        == 0
    )
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA projector CASCADE")

    result = projector(
        workdir,
        "run",
        "shop_projections:balances",
        "-c",
        "account",
        "--database-url",
        empty_database_url,
    )

    assert result.returncode == 1
    assert "run `projector migrate`" in result.stderr


SLOW_IMPORT = """
import sys, time
print("importing", file=sys.stderr, flush=True)
time.sleep(5)
from shop_projections import balances
"""


def _started(
    workdir: Path, *args: str, env: dict[str, str] | None = None, ignore_sigint: bool = False
) -> tuple[subprocess.Popen[bytes], Path]:
    """A `projector` process whose stderr goes to a file; with ``ignore_sigint`` it starts
    with SIGINT ignored, as a script's ``projector run ... &`` does."""
    log = workdir / f"stderr-{time.monotonic_ns()}.txt"

    def ignoring() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with log.open("wb") as out:
        process = subprocess.Popen(
            [*PROJECTOR, *args],
            cwd=workdir,
            env={**os.environ, "HANDLED_FILE": str(workdir / "handled.txt"), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=out,
            preexec_fn=ignoring if ignore_sigint else None,
        )
    return process, log


def test_sigint_stops_a_run_started_with_sigint_ignored_even_while_it_starts(
    workdir: Path, own_store_url: str
) -> None:
    (workdir / "slow_projections.py").write_text(textwrap.dedent(SLOW_IMPORT))
    process, log = _started(
        workdir,
        *("run", "slow_projections:balances", "-c", "account", "--database-url", own_store_url),
        ignore_sigint=True,
    )
    logged(log, "importing")

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=3) == 128 + signal.SIGINT
    assert "received SIGINT: stopping now" in log.read_text().splitlines()[-1]


def test_sigint_stops_a_running_run_gracefully_whatever_it_inherited(
    workdir: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(5)})
    process, log = _started(
        workdir,
        *("run", "shop_projections:balances", "-c", "account", "--database-url", own_store_url),
        ignore_sigint=True,
    )
    logged(log, "action=source_tail_reached")

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=15) == 0, log.read_text()
    assert "action=stopping signal=SIGINT" in log.read_text()


def _in_a_long_call(
    workdir: Path, url: str, *, shutdown_timeout: float
) -> tuple[subprocess.Popen[bytes], Path]:
    """A run whose handler is in a minute-long call of stream account-slow."""
    anyio.run(write_events, url, {"account-slow": 1})
    process, log = _started(
        workdir,
        *("run", "shop_projections:balances", "-c", "account", "--database-url", url),
        *("--shutdown-timeout", str(shutdown_timeout)),
        env={"HANDLER_DELAY": "60"},
    )
    logged(log, "action=source_tail_reached")
    return process, log


def test_a_stop_that_outlasts_shutdown_timeout_names_the_calls_it_abandons(
    workdir: Path, own_store_url: str
) -> None:
    process, log = _in_a_long_call(workdir, own_store_url, shutdown_timeout=0.5)

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=15) == 0, log.read_text()
    [abandoned] = [line for line in log.read_text().splitlines() if "calls_abandoned" in line]
    assert "1 handler call(s) still running after shutdown_timeout (0.5 s)" in abandoned
    assert "account-slow (" in abandoned


def test_a_second_signal_while_stopping_stops_at_once_in_one_line(
    workdir: Path, own_store_url: str
) -> None:
    process, log = _in_a_long_call(workdir, own_store_url, shutdown_timeout=60)
    process.send_signal(signal.SIGTERM)
    logged(log, "action=stopping")

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=5) == 128 + signal.SIGINT
    last = log.read_text().splitlines()[-1]
    assert "received SIGINT again: stopping now" in last
    assert "Traceback" not in log.read_text()
    assert "Aborted" not in log.read_text()


def test_with_json_logs_every_line_is_json_the_last_error_included(workdir: Path) -> None:
    result = projector(
        workdir,
        *("run", "shop_projections:balances", "-c", "account", "--log-format", "json"),
        *("--database-url", "postgresql://nobody@127.0.0.1:1/none", "--connect-timeout", "1"),
        *("--start-wait", "1"),
    )

    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 1
    assert entries[0]["action"] == "reconnecting"  # it waited start_wait for the server
    assert entries[-1]["action"] == "error"
    assert "(start_wait): cannot connect to the database nobody@127.0.0.1:1" in (
        entries[-1]["message"]
    )


RUN_A = ("run", "shop_projections:balances", "-c", "a", *NOWHERE)
JSON_LOGS = {"PROJECTOR_LOG_FORMAT": "json"}


@pytest.mark.parametrize(
    ("args", "env"),
    [
        ([*RUN_A, "--batch-size", "0", "--log-format", "json"], {}),
        ([*RUN_A, "--log-format=json"], {"PROJECTOR_BATCH_SIZE": "0"}),
        ([*RUN_A, "--batch-size", "0"], JSON_LOGS),
        (["status", "--database-url", "postgresql://a@127.0.0.1:99999/b"], JSON_LOGS),
        (["rebalance", "--group", "g", "--group-size", "0", *NOWHERE], JSON_LOGS),
    ],
)
def test_with_json_logs_bad_input_is_reported_as_json_too(
    workdir: Path, args: list[str], env: dict[str, str]
) -> None:
    result = projector(workdir, *args, env=env)

    (entry,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 2
    assert (entry["level"], entry["action"]) == ("ERROR", "error")


def test_migrate_prints_what_it_applied_and_none_of_alembics_own_lines(
    workdir: Path, empty_database_url: str
) -> None:
    result = projector(workdir, "migrate", "--message-store", "--database-url", empty_database_url)

    assert result.returncode == 0, result.stderr
    assert "applied 0001" in result.stdout
    assert "Context impl" not in result.stderr
    assert "Will assume transactional DDL" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["parked", "list", "--group", "a b"],
        ["checkpoints", "list", "--group", "a b"],
        ["status", "--group", "a b"],
    ],
)
def test_listing_commands_refuse_an_unsafe_group_name_in_one_line(
    workdir: Path, own_store_url: str, args: list[str]
) -> None:
    result = projector(workdir, *args, "--database-url", own_store_url)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "group 'a b'" in result.stderr


def test_wait_takes_its_timeout_from_the_environment(workdir: Path, own_store_url: str) -> None:
    anyio.run(write_events, own_store_url, {"account-1": 1})

    result = projector(
        workdir,
        *("wait", "--group", "nobody", "--position", "1", "--database-url", own_store_url),
        env={"PROJECTOR_WAIT_TIMEOUT": "0.5"},
    )

    assert result.returncode == 1
    assert "within 0.5 s" in result.stderr
