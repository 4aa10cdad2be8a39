"""Elastic groups as an operator runs them: `projector run --elastic`, `projector group show`
and `projector group convert`, and the one-line errors of each."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.support.cli import BALANCES, ProjectorProcess, run_projector
from tests.support.groups import CATEGORY, category_head, group_checkpoints
from tests.support.projecting import write_events
from tests.support.waiting import wait_until

GROUP = "balances"  # the handler module's projection, hence its default group


def _streams(count: int) -> dict[str, int]:
    return {f"{CATEGORY}-{i}": 2 for i in range(count)}


def _run(url: str, *more: str) -> list[str]:
    return [
        *("run", BALANCES, "--category", CATEGORY, "--database-url", url),
        *("--checkpoint-interval", "0.1", "--tail-sleep", "0.05", *more),
    ]


def test_group_show_lists_the_running_member_with_every_bucket(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, _streams(20))
    member = ProjectorProcess.start(tmp_path, "elastic", *_run(own_store_url, "--elastic"))
    try:
        head = anyio.run(category_head, own_store_url)
        wait_until(
            lambda: (
                {row.position for row in anyio.run(group_checkpoints, own_store_url, GROUP)}
                == {head + 1}
            ),
            within=30,
            what="every bucket checkpointed at the head",
        )
        shown = run_projector(tmp_path, "group", "show", GROUP, "--database-url", own_store_url)
    finally:
        assert member.stop() == 0, member.stderr
    assert shown.returncode == 0, shown.stderr
    assert f"elastic group {GROUP}: 64 buckets" in shown.stdout
    assert f" {member.popen.pid} " in shown.stdout
    assert " 0-63 " in shown.stdout
    assert len(member.handled()) == 40


def test_convert_turns_a_fixed_groups_checkpoints_into_buckets(
    tmp_path: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, _streams(20))
    database = ["--database-url", own_store_url]
    for member in range(2):
        fixed = _run(own_store_url, "--member", str(member), "--group-size", "2")
        assert run_projector(tmp_path, *fixed, "--until-caught-up").returncode == 0

    converted = run_projector(
        tmp_path, "group", "convert", GROUP, "--to-elastic", "--buckets", "4", *database
    )
    again = run_projector(tmp_path, "group", "convert", GROUP, "--to-elastic", *database)
    refused = run_projector(tmp_path, *_run(own_store_url, "--member", "0", "--group-size", "2"))

    assert converted.returncode == 0, converted.stderr
    assert f"group {GROUP}: 2 member(s) -> elastic, 4 buckets" in converted.stdout
    rows = anyio.run(group_checkpoints, own_store_url, GROUP)
    assert sorted((row.member, row.size) for row in rows) == [(b, 4) for b in range(4)]
    assert again.returncode == 2
    assert (
        again.stderr
        == f"error: group '{GROUP}' is elastic already: start its members with --elastic\n"
    )
    assert refused.returncode == 2
    assert "is an elastic group: start its members with --elastic" in refused.stderr


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--elastic", "--member", "1", "--group-size", "2"], "drop --member and --group-size"),
        (["--elastic", "--buckets", "0"], "setting buckets (--buckets / PROJECTOR_BUCKETS)"),
        (["--buckets", "8"], "--buckets is for elastic groups: add --elastic"),
    ],
)
def test_bad_elastic_flags_exit_2_with_one_line(
    tmp_path: Path, flags: list[str], expected: str
) -> None:
    refused = run_projector(tmp_path, *_run("postgresql://nowhere/db", *flags))
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert expected in refused.stderr
