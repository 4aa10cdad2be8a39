"""`projector status` as a user runs it: a separate process, with no projector running."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from projector.admin import groups
from projector.cli.render import COLUMNS
from projector.model.events import consumer_group_member
from projector.storage.database import connect
from tests.support.cli import run_projector
from tests.support.projecting import write_events


@dataclass(frozen=True)
class Backlog:
    url: str
    lags: dict[str, int]  # checkpoint name -> events from its checkpoint on


async def _arrange(url: str) -> None:
    """Plain group `reports` at position 41; consumer group `balances` of 2 at 1 and 61."""
    await write_events(url, {f"account-{i}": 1 + i % 3 for i in range(40)})
    conn = await connect(url)
    async with conn:
        await conn.set_autocommit(True)
        await groups.set_checkpoint(conn, "reports", "account", 41, create=True)
        await groups.set_checkpoint(conn, "balances", "account", 1, create=True)
        await groups.rebalance(conn, "balances", 2, dry_run=False)
        await groups.set_checkpoint(conn, "balances", "account", 61, member=1)


def _expected_lags(url: str) -> dict[str, int]:
    """Counted from the rows themselves, the way each member's partition says."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT global_position, stream_name FROM message_store.messages")
        events = [(int(g), name) for g, name in rows]
    return {
        "reports": sum(g >= 41 for g, _ in events),
        "balances-0": sum(g >= 1 for g, s in events if consumer_group_member(s, 2) == 0),
        "balances-1": sum(g >= 61 for g, s in events if consumer_group_member(s, 2) == 1),
    }


@pytest.fixture
def backlog(own_store_url: str) -> Backlog:
    anyio.run(_arrange, own_store_url)
    return Backlog(own_store_url, _expected_lags(own_store_url))


def _members(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_status_json_gives_each_members_exact_lag_with_no_projector_running(
    tmp_path: Path, backlog: Backlog
) -> None:
    members = _members(run_projector(tmp_path, "status", "--json", "--database-url", backlog.url))

    assert {m["name"]: m["lag_events"] for m in members} == backlog.lags
    assert {m["name"]: m["checkpoint"] for m in members} == {
        "balances-0": 1,
        "balances-1": 61,
        "reports": 41,
    }
    assert not any(m["running"] for m in members)
    for m in members:
        assert m["head"] > 0
        assert m["lag_seconds"] > 0
        assert m["updated_at"].endswith("+00:00")


def test_status_prints_a_table_with_every_column_and_member(
    tmp_path: Path, backlog: Backlog
) -> None:
    result = run_projector(tmp_path, "status", "--database-url", backlog.url)

    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    # A two-word header may wrap on a narrow terminal; "retrying" and "parked" show only when
    # some are.
    for word in " ".join(c for c in COLUMNS if c not in {"retrying", "parked"}).split():
        assert word in words
    assert "parked" not in words
    assert "retrying" not in words
    # A line per member, found by its name (headers and long cells may wrap onto more lines).
    cells = [line.split() for line in result.stdout.splitlines()]
    lines = {words[0]: words for words in cells if words and words[0] in backlog.lags}
    assert set(lines) == {"balances-0", "balances-1", "reports"}
    for name, lag in backlog.lags.items():
        assert lines[name][4] == str(lag)
        assert lines[name][-1] == "stopped"


def test_status_group_shows_only_that_group(tmp_path: Path, backlog: Backlog) -> None:
    url = backlog.url

    balances = _members(
        run_projector(tmp_path, "status", "--json", "--group", "balances", "--database-url", url)
    )
    reports = run_projector(tmp_path, "status", "--group", "reports", "--database-url", url)
    nobody = _members(
        run_projector(tmp_path, "status", "--json", "--group", "nobody", "--database-url", url)
    )

    assert [m["name"] for m in balances] == ["balances-0", "balances-1"]
    assert "reports" in reports.stdout
    assert "balances" not in reports.stdout
    assert nobody == []


def test_status_refuses_a_member_name_for_a_group_in_one_line(
    tmp_path: Path, backlog: Backlog
) -> None:
    result = run_projector(
        tmp_path, "status", "--group", "balances-1", "--database-url", backlog.url
    )

    assert result.returncode == 2
    assert result.stderr.startswith("error: group 'balances-1' is not valid")
    assert result.stderr.count("\n") == 1
