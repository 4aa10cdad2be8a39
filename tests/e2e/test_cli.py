"""The `projector` command as a user runs it: a separate process, stopped with SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import psycopg
import pytest

from tests.support.cli import BALANCES, ProjectorProcess, handled, run_projector
from tests.support.projecting import write_events
from tests.support.waiting import logged, wait_until

MODULE = BALANCES.partition(":")[0]


def committed(url: str, group: str, category: str) -> int | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT position FROM projector.checkpoints"
            " WHERE checkpoint_name = %s AND category = %s",
            (group, category),
        ).fetchone()
    return None if row is None else int(row[0])


def test_migrate_then_run_until_caught_up_projects_every_event(
    tmp_path: Path, empty_database_url: str
) -> None:
    migrated = run_projector(
        tmp_path, "migrate", "--message-store", "--database-url", empty_database_url
    )
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.splitlines()[0] == "message store created"
    assert "applied 0001: Checkpoints" in migrated.stdout
    assert migrated.stdout.splitlines()[-1] == (
        "projector tables created or upgraded (schema projector)"
    )
    again = run_projector(
        tmp_path, "migrate", "--message-store", "--database-url", empty_database_url
    )
    assert again.stdout == "message store already present\nprojector tables already up to date\n"
    anyio.run(write_events, empty_database_url, {f"account-{i}": 3 for i in range(30)})

    run = run_projector(
        tmp_path,
        "run",
        BALANCES,
        "--category",
        "account",
        "--until-caught-up",
        env={"PROJECTOR_DATABASE_URL": empty_database_url, "PROJECTOR_CHECKPOINT_INTERVAL": "0.1"},
    )

    assert run.returncode == 0, run.stderr
    events = handled(tmp_path / "handled")
    assert len(events) == 90
    for i in range(30):
        assert [p for s, p, _ in events if s == f"account-{i}"] == [0, 1, 2]
    assert committed(empty_database_url, "balances", "account") == max(g for *_, g in events) + 1
    assert "action=caught_up" in run.stderr


def test_sigterm_lets_running_handlers_finish_and_commits_the_checkpoint(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(200)})
    process = ProjectorProcess.start(
        tmp_path,
        "run",
        *("run", BALANCES, "-c", "account", "--batch-size", "20"),
        *("--checkpoint-interval", "3600", "--database-url", own_store_url),
        env={"HANDLER_DELAY": "0.05"},
    )
    processes.append(process)
    wait_until(lambda: len(process.handled()) >= 40, what="40 events handled")

    code = process.stop()

    stderr = process.stderr
    assert code == 0, stderr
    assert "psycopg" not in stderr, "a clean stop logs no warning of the driver's"
    position = committed(own_store_url, "balances", "account")
    assert position is not None, stderr
    assert position > 20, stderr
    done = {g for *_, g in process.handled()}
    assert set(range(1, position)) <= done, "the checkpoint passed an unhandled event"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "missing_module:balances", "-c", "account"],
            "cannot import module 'missing_module'",
        ),
        (["run", f"{MODULE}:nothing", "-c", "account"], "has no attribute 'nothing'"),
        (
            ["run", f"{MODULE}:not_a_projection", "-c", "account"],
            "not a projector.Projection",
        ),
        (
            ["run", BALANCES, "-c", "bad-name"],
            "category 'bad-name' is not valid",
        ),
        (["run", BALANCES, "-c", "account", "--group", "a b"], "group 'a b'"),
        (["run", BALANCES, "-c", "account", "--batch-size", "0"], "batch_size"),
        (["run", BALANCES, "-c", "account", "--tail-sleep", "-1"], "tail_sleep"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_projector(
        tmp_path, *args, "--database-url", "postgresql://nobody@127.0.0.1:1/none"
    )

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
        (["run", BALANCES, "-c", "a", "--outage-limit", "inf"], "finite"),
        (["run", BALANCES, "-c", "a", "--member", "0", "--group-size", "0"], ""),
    ],
)
def test_numbers_out_of_their_range_are_refused_in_one_line_before_any_database_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_projector(tmp_path, *args, *NOWHERE)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert message in result.stderr


@pytest.mark.parametrize("command", [["status"], ["run", BALANCES, "-c", "a"]])
def test_a_database_url_with_an_impossible_port_is_bad_input(
    tmp_path: Path, command: list[str]
) -> None:
    url = "postgresql://nobody:secret@127.0.0.1:99999/none"
    result = run_projector(tmp_path, *command, "--database-url", url)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "its port '99999' is not a port: give 1 to 65535" in result.stderr
    assert "secret" not in result.stderr


def test_a_database_that_is_down_is_one_clear_line_and_nothing_written(tmp_path: Path) -> None:
    result = run_projector(
        tmp_path,
        "run",
        BALANCES,
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
    assert not (tmp_path / "handled").exists()


def test_a_database_without_projector_tables_names_the_migrate_command(
    tmp_path: Path, empty_database_url: str
) -> None:
    assert (
        run_projector(
            tmp_path, "migrate", "--message-store", "--database-url", empty_database_url
        ).returncode
        == 0
    )
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA projector CASCADE")

    result = run_projector(
        tmp_path,
        "run",
        BALANCES,
        "-c",
        "account",
        "--database-url",
        empty_database_url,
    )

    assert result.returncode == 1
    assert "run `projector migrate`" in result.stderr


SLOW_IMPORT = f"""
import sys, time
print("importing", file=sys.stderr, flush=True)
time.sleep(5)
from {MODULE} import balances
"""


def test_sigint_stops_a_run_started_with_sigint_ignored_even_while_it_starts(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    (tmp_path / "slow_projections.py").write_text(SLOW_IMPORT)  # imported from where it runs
    process = ProjectorProcess.start(
        tmp_path,
        "run",
        *("run", "slow_projections:balances", "-c", "account", "--database-url", own_store_url),
        ignore_sigint=True,
    )
    processes.append(process)
    logged(process.stderr_path, "importing")

    process.signal(signal.SIGINT)

    assert process.wait(timeout=3) == 128 + signal.SIGINT
    assert "received SIGINT: stopping now" in process.stderr.splitlines()[-1]


def test_sigint_stops_a_running_run_gracefully_whatever_it_inherited(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(5)})
    process = ProjectorProcess.start(
        tmp_path,
        "run",
        *("run", BALANCES, "-c", "account", "--database-url", own_store_url),
        ignore_sigint=True,
    )
    processes.append(process)
    logged(process.stderr_path, "action=source_tail_reached")

    process.signal(signal.SIGINT)

    assert process.wait(timeout=15) == 0, process.stderr
    assert "action=stopping signal=SIGINT" in process.stderr


def _in_a_long_call(
    tmp_path: Path, url: str, processes: list[ProjectorProcess], *, shutdown_timeout: float
) -> ProjectorProcess:
    """A run whose handler is in a minute-long call of stream account-slow."""
    anyio.run(write_events, url, {"account-slow": 1})
    process = ProjectorProcess.start(
        tmp_path,
        "run",
        *("run", BALANCES, "-c", "account", "--database-url", url),
        *("--shutdown-timeout", str(shutdown_timeout)),
        env={"HANDLER_DELAY": "60"},
    )
    processes.append(process)
    logged(process.stderr_path, "action=source_tail_reached")
    return process


def test_a_stop_that_outlasts_shutdown_timeout_names_the_calls_it_abandons(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    process = _in_a_long_call(tmp_path, own_store_url, processes, shutdown_timeout=0.5)

    process.signal(signal.SIGTERM)

    assert process.wait(timeout=15) == 0, process.stderr
    [abandoned] = [line for line in process.stderr.splitlines() if "calls_abandoned" in line]
    assert "1 handler call(s) still running after shutdown_timeout (0.5 s)" in abandoned
    assert "account-slow (" in abandoned


def test_a_second_signal_while_stopping_stops_at_once_in_one_line(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    process = _in_a_long_call(tmp_path, own_store_url, processes, shutdown_timeout=60)
    process.signal(signal.SIGTERM)
    logged(process.stderr_path, "action=stopping")

    process.signal(signal.SIGINT)

    assert process.wait(timeout=5) == 128 + signal.SIGINT
    last = process.stderr.splitlines()[-1]
    assert "received SIGINT again: stopping now" in last
    assert "Traceback" not in process.stderr
    assert "Aborted" not in process.stderr


def test_with_json_logs_every_line_is_json_the_last_error_included(tmp_path: Path) -> None:
    result = run_projector(
        tmp_path,
        *("run", BALANCES, "-c", "account", "--log-format", "json"),
        *("--database-url", "postgresql://nobody@127.0.0.1:1/none", "--connect-timeout", "1"),
        *("--start-wait", "1"),
    )

    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 1
    assert entries[0]["action"] == "reconnecting"  # it waited start_wait for the server
    assert entries[-1]["action"] == "error"
    assert (
        "(start_wait): cannot connect to the database nobody@127.0.0.1:1"
        in (entries[-1]["message"])
    )


RUN_A = ("run", BALANCES, "-c", "a", *NOWHERE)
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
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = run_projector(tmp_path, *args, env=env)

    (entry,) = [json.loads(line) for line in result.stderr.splitlines()]
    assert result.returncode == 2
    assert (entry["level"], entry["action"]) == ("ERROR", "error")


def test_migrate_prints_what_it_applied_and_none_of_alembics_own_lines(
    tmp_path: Path, empty_database_url: str
) -> None:
    result = run_projector(
        tmp_path, "migrate", "--message-store", "--database-url", empty_database_url
    )

    assert result.returncode == 0, result.stderr
    assert "applied 0001" in result.stdout
    assert "Context impl" not in result.stderr
    assert "Will assume transactional DDL" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["failing", "list", "--group", "a b"],
        ["checkpoints", "list", "--group", "a b"],
        ["status", "--group", "a b"],
    ],
)
def test_listing_commands_refuse_an_unsafe_group_name_in_one_line(
    tmp_path: Path, own_store_url: str, args: list[str]
) -> None:
    result = run_projector(tmp_path, *args, "--database-url", own_store_url)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "group 'a b'" in result.stderr


def test_wait_takes_its_timeout_from_the_environment(tmp_path: Path, own_store_url: str) -> None:
    anyio.run(write_events, own_store_url, {"account-1": 1})

    result = run_projector(
        tmp_path,
        *("wait", "--group", "nobody", "--position", "1", "--database-url", own_store_url),
        env={"PROJECTOR_WAIT_TIMEOUT": "0.5"},
    )

    assert result.returncode == 1
    assert "within 0.5 s" in result.stderr
