"""Consumer groups as an operator runs them: `projector run --member/--group-size` processes, a
hot standby taking over from a killed member, and the `checkpoints` and `rebalance` commands."""

from __future__ import annotations

import json
import socket
from datetime import datetime
from functools import partial
from pathlib import Path

import anyio
import psycopg

from projector.model.events import consumer_group_member
from projector.storage.checkpoints import CheckpointRow
from tests.support.cli import BALANCES, ProjectorProcess, run_projector
from tests.support.groups import CATEGORY, category_head, group_checkpoints, run_members
from tests.support.projecting import Recorder, write_events
from tests.support.waiting import wait_until

GROUP = "balances"  # the handler module's projection, hence its default group
INFO_LOGS = {"PROJECTOR_LOG_LEVEL": "INFO"}


def _run_args(url: str, member: int, size: int, *more: str) -> list[str]:
    return [
        "run",
        BALANCES,
        "--category",
        CATEGORY,
        "--member",
        str(member),
        "--group-size",
        str(size),
        "--database-url",
        url,
        "--checkpoint-interval",
        "0.1",
        "--tail-sleep",
        "0.05",
        *more,
    ]


def _streams(first: int, count: int) -> dict[str, int]:
    return {f"{CATEGORY}-{i}": 1 for i in range(first, first + count)}


def _of_member(streams: dict[str, int], member: int, size: int) -> set[str]:
    return {name for name in streams if consumer_group_member(name, size) == member}


def _rows(url: str) -> list[CheckpointRow]:
    return anyio.run(group_checkpoints, url, GROUP)


def _run_group_in_process(url: str, size: int) -> None:
    recorders = {member: Recorder() for member in range(size)}
    anyio.run(partial(run_members, url, recorders, size=size, group=GROUP))


def test_a_standby_waits_then_takes_over_when_the_member_is_killed_and_nothing_is_lost(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    before, after = _streams(0, 60), _streams(60, 60)
    anyio.run(write_events, own_store_url, before)
    args = _run_args(own_store_url, 1, 2)
    running = ProjectorProcess.start(tmp_path, "running", *args, env=INFO_LOGS)
    processes.append(running)
    wait_until(
        lambda: {s for s, *_ in running.handled()} == _of_member(before, 1, 2),
        within=20,
        what="the first runner handles its streams",
    )

    standby = ProjectorProcess.start(tmp_path, "standby", *args, env=INFO_LOGS)
    processes.append(standby)
    wait_until(
        lambda: "action=standby_waiting" in standby.stderr, within=20, what="standby_waiting"
    )
    waiting_since = _server_time(own_store_url)
    wait_until(
        lambda: _polled_since(own_store_url, standby, waiting_since),
        within=20,
        what="the standby polls the member's lock again",
    )
    assert standby.handled() == []
    assert standby.stderr.count("action=standby_waiting") == 1
    assert "action=member_acquired" not in standby.stderr

    running.kill()
    wait_until(
        lambda: "action=member_acquired" in standby.stderr, within=20, what="member_acquired"
    )
    anyio.run(write_events, own_store_url, after)
    wait_until(
        lambda: _of_member(after, 1, 2) <= {s for s, *_ in standby.handled()},
        within=20,
        what="the standby handles events written after the kill",
    )

    # Every event of member 1 handled by one or the other (each stream has one event), and
    # the standby kept to member 1.
    both = {(s, p) for s, p, _ in running.handled() + standby.handled()}
    assert both == {(s, 0) for s in _of_member(before | after, 1, 2)}
    assert {s for s, *_ in standby.handled()} <= _of_member(before | after, 1, 2)
    assert standby.stop() == 0, standby.stderr


def _server_time(url: str) -> datetime:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _polled_since(url: str, process: ProjectorProcess, since: datetime) -> bool:
    """Whether ``process``'s lock session (a standby polls the lock on it) began a statement
    after ``since``, by the server's clock, and has finished it."""
    name = f"projector {GROUP}-1 {socket.gethostname()} pid {process.popen.pid}"[:63]
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT query_start > %s AND state = 'idle' FROM pg_stat_activity"
            " WHERE application_name = %s",
            (since, name),
        ).fetchone()
    return row is not None and bool(row[0])


def test_no_standby_exits_1_naming_the_running_member_instead_of_waiting(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    running = ProjectorProcess.start(
        tmp_path, "running", *_run_args(own_store_url, 1, 2), env=INFO_LOGS
    )
    processes.append(running)
    wait_until(lambda: "action=member_acquired" in running.stderr, within=20, what="acquired")

    # The running process's application name, as the server keeps it (63 bytes at most).
    holder = f"projector {GROUP}-1 {socket.gethostname()} pid {running.popen.pid}"[:63]

    refused = run_projector(tmp_path, *_run_args(own_store_url, 1, 2, "--no-standby"))

    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith(f"error: {GROUP}-1 is already running ({holder} from ")
    assert not (tmp_path / "handled").exists()
    assert running.stop() == 0, running.stderr


def test_commands_that_change_checkpoints_exit_1_while_a_member_runs(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    running = ProjectorProcess.start(tmp_path, "running", *_run_args(own_store_url, 1, 2))
    processes.append(running)
    head = anyio.run(category_head, own_store_url)
    wait_until(
        lambda: [row.position for row in _rows(own_store_url)] == [head + 1],
        within=20,
        what="member 1 checkpoints the category's tail",
    )
    rows = _rows(own_store_url)
    database = ["--database-url", own_store_url]
    changes = [
        ["rebalance", "--group", GROUP, "--group-size", "3", *database],
        ["checkpoints", "set", "--group", GROUP, "--category", CATEGORY, "--position", "1",
         "--member", "1", *database],
        ["checkpoints", "reset", "--group", GROUP, "--yes", *database],
    ]  # fmt: skip

    refused = [run_projector(tmp_path, *change) for change in changes]
    dry_run = run_projector(
        tmp_path, "rebalance", "--group", GROUP, "--group-size", "3", "--dry-run", *database
    )
    convert_dry_run = run_projector(
        tmp_path, "group", "convert", GROUP, "--to-elastic", "--dry-run", *database
    )

    for result in refused:
        assert result.returncode == 1, result.stdout
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith(f"error: group '{GROUP}' is running: member 1 (")
        assert result.stderr.endswith("Stop every member first\n")
    assert dry_run.returncode == 0, dry_run.stderr
    assert "  note: running now: member 1 (" in dry_run.stdout
    assert dry_run.stdout.endswith("dry run: nothing changed\n")
    assert convert_dry_run.returncode == 0, convert_dry_run.stderr
    assert "  note: running now: member 1 (" in convert_dry_run.stdout
    assert convert_dry_run.stdout.endswith("dry run: nothing changed\n")
    assert _rows(own_store_url) == rows
    assert running.stop() == 0, running.stderr


def test_a_rebalance_to_the_size_the_group_has_changes_nothing(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    _run_group_in_process(own_store_url, 2)
    rows = _rows(own_store_url)

    same = run_projector(
        tmp_path, "rebalance", "--group", GROUP, "--size", "2", "--database-url", own_store_url
    )

    assert same.returncode == 0, same.stderr
    assert same.stdout == f"group {GROUP} already has 2 member(s): nothing changed\n"
    # --size, the old spelling, still works and says what replaces it.
    assert "--size is deprecated: use --group-size" in same.stderr
    assert "action=setting_deprecated" in same.stderr
    assert _rows(own_store_url) == rows


def test_a_member_started_with_another_group_size_exits_2_naming_rebalance(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    _run_group_in_process(own_store_url, 2)

    refused = run_projector(tmp_path, *_run_args(own_store_url, 0, 3, "--until-caught-up"))

    # At INFO, the member's own log lines come first (it takes its lock, then checks the size).
    *_, error = refused.stderr.splitlines()
    assert refused.returncode == 2
    assert error.startswith(f"error: group '{GROUP}' has checkpoints for a group of size 2")
    assert f"`projector rebalance --group {GROUP} --group-size 3`" in error
    assert refused.stderr.count("error: ") == 1, refused.stderr
    assert not (tmp_path / "handled").exists()


def test_checkpoints_list_json_shows_each_members_position_after_a_run(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 40))
    members = [
        ProjectorProcess.start(
            tmp_path, f"member{m}", *_run_args(own_store_url, m, 2, "--until-caught-up")
        )
        for m in range(2)
    ]
    processes.extend(members)
    assert [member.wait() for member in members] == [0, 0], [m.stderr for m in members]

    listed = run_projector(
        tmp_path, "checkpoints", "list", "--json", "--group", GROUP, "--database-url", own_store_url
    )

    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    head = anyio.run(category_head, own_store_url)
    assert [{k: v for k, v in row.items() if k != "updated_at"} for row in rows] == [
        {
            "name": f"{GROUP}-{m}",
            "group": GROUP,
            "member": m,
            "size": 2,
            "category": CATEGORY,
            "checkpoint": head + 1,
        }
        for m in range(2)
    ]
    assert all(datetime.fromisoformat(row["updated_at"]).tzinfo is not None for row in rows)


def test_a_run_resumes_from_the_position_set_with_checkpoints_set(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    streams = _streams(0, 60)
    anyio.run(write_events, own_store_url, streams)
    args = _run_args(own_store_url, 0, 2, "--until-caught-up")
    first = ProjectorProcess.start(tmp_path, "first", *args)
    processes.append(first)
    assert first.wait() == 0, first.stderr
    replay_from = sorted(g for *_, g in first.handled())[len(first.handled()) // 2]

    set_ = run_projector(
        tmp_path,
        "checkpoints",
        "set",
        "--group",
        GROUP,
        "--category",
        CATEGORY,
        "--position",
        str(replay_from),
        "--member",
        "0",
        "--database-url",
        own_store_url,
    )
    again = ProjectorProcess.start(tmp_path, "again", *args)
    processes.append(again)

    assert set_.returncode == 0, set_.stderr
    assert set_.stdout == f"{GROUP}-0 {CATEGORY}: next position {replay_from}\n"
    assert again.wait() == 0, again.stderr
    assert sorted(again.handled()) == sorted(e for e in first.handled() if e[2] >= replay_from)


def test_checkpoints_reset_deletes_only_once_confirmed(tmp_path: Path, own_store_url: str) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    _run_group_in_process(own_store_url, 2)
    rows = _rows(own_store_url)
    reset = ["checkpoints", "reset", "--group", GROUP, "--database-url", own_store_url]

    declined = run_projector(tmp_path, *reset, stdin="n\n")
    kept = _rows(own_store_url)
    confirmed = run_projector(tmp_path, *reset, "--yes")

    assert f"delete every checkpoint of group '{GROUP}'?" in declined.stdout
    assert declined.returncode == 1
    assert kept == rows
    assert len(rows) == 2
    assert confirmed.returncode == 0, confirmed.stderr
    assert confirmed.stdout == f"deleted 2 checkpoint(s) of group {GROUP}\n"
    assert _rows(own_store_url) == []


def test_rebalance_dry_run_prints_the_plan_and_rebalance_prints_the_new_positions(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, _streams(0, 20))
    _run_group_in_process(own_store_url, 2)
    lowered = run_projector(
        tmp_path,
        "checkpoints",
        "set",
        "--group",
        GROUP,
        "--category",
        CATEGORY,
        "--position",
        "7",
        "--member",
        "1",
        "--database-url",
        own_store_url,
    )
    assert lowered.returncode == 0, lowered.stderr
    rows = _rows(own_store_url)
    rebalance = ["rebalance", "--group", GROUP, "--group-size", "3"]
    rebalance += ["--database-url", own_store_url]

    dry_run = run_projector(tmp_path, *rebalance, "--dry-run")
    unchanged = _rows(own_store_url)
    done = run_projector(tmp_path, *rebalance)

    assert dry_run.returncode == 0, dry_run.stderr
    assert dry_run.stdout == (
        f"group {GROUP}: 2 -> 3 members\n"
        f"  {CATEGORY}: members 0..2 would restart at 7\n"
        "dry run: nothing changed\n"
    )
    assert unchanged == rows
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout == f"group {GROUP}: 2 -> 3 members\n  {CATEGORY}: members 0..2 restarted at 7\n"
    )
    assert [(r.member, r.size, r.category, r.position) for r in _rows(own_store_url)] == [
        (m, 3, CATEGORY, 7) for m in range(3)
    ]


def test_migrate_builds_a_member_index_once_and_refuses_a_size_below_two(
    tmp_path: Path, own_store_url: str
) -> None:
    migrate = ["migrate", "--database-url", own_store_url]

    first = run_projector(tmp_path, *migrate, "--member-index", "3", "--member-index", "2")
    again = run_projector(tmp_path, *migrate, "--member-index", "3")
    refused = run_projector(tmp_path, *migrate, "--member-index", "1")

    assert first.returncode == 0, first.stderr
    assert "member index for groups of 3 built (projector_member_3)" in first.stdout
    assert "member index for groups of 2 built (projector_member_2)" in first.stdout
    assert again.returncode == 0, again.stderr
    assert "member index for groups of 3 already present" in again.stdout
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: --member-index 1: ")
    assert refused.stdout == ""
