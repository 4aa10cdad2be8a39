"""A transactional projection killed with SIGKILL again and again during a catch-up, then run by
a consumer group that is rebalanced and reset: its balances still equal a fold of the events."""

from __future__ import annotations

import random
import time
from functools import partial
from pathlib import Path

import anyio
import psycopg

from projector.admin.groups import rebalance, reset_group
from tests.support.balances import projected_and_folded, write_transactions
from tests.support.cli import EXACTLY_ONCE, ProjectorProcess
from tests.support.waiting import wait_until

EVENTS = 3000


def _start(
    workdir: Path, url: str, name: str, processes: list[ProjectorProcess], *args: str
) -> ProjectorProcess:
    process = ProjectorProcess.start(
        workdir,
        name,
        *("run", EXACTLY_ONCE, "-c", "account", "--batch-size", "20"),
        *("--checkpoint-interval", "0.2", *args),
        env={"PROJECTOR_DATABASE_URL": url},
    )
    processes.append(process)
    return process


def _finish(workdir: Path, url: str, name: str, processes: list[ProjectorProcess]) -> None:
    process = _start(workdir, url, name, processes, "--until-caught-up")
    assert process.wait(timeout=120) == 0, process.stderr


def _applied(url: str) -> int:
    """How many events the balances group has applied: each stream's position row holds the
    last position it applied."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(position + 1), 0) FROM projector.stream_positions"
            " WHERE group_name = 'balances'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _applied_more_than(url: str, before: int, process: ProjectorProcess) -> bool:
    assert process.running(), f"projector exited with {process.popen.returncode}"
    return _applied(url) > before


def test_balances_survive_sigkills_a_rebalance_and_a_reset(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(lambda: write_transactions(url, accounts=60, events=EVENTS, seed=5))
    rng = random.Random(5)

    applied = [0]
    for life in range(4):
        process = _start(tmp_path, url, f"life{life}", processes)
        # Killed at a random point once it has applied more (however long it took to start).
        wait_until(
            partial(_applied_more_than, url, applied[-1], process),
            within=60,
            what=f"life {life} applies events",
        )
        time.sleep(rng.uniform(0.0, 0.5))
        assert process.kill() == -9, process.stderr
        applied.append(_applied(url))
    assert applied == sorted(set(applied)), f"a life was killed before it applied: {applied}"
    # The kills land mid-catch-up: on a quick moment the last life may finish the catch-up
    # before its kill, but not the three before it.
    assert applied[-2] < EVENTS, f"the catch-up was over before the third kill: {applied}"
    _finish(tmp_path, url, "caught-up", processes)

    async def regroup(size: int | None) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            if size is None:
                await reset_group(conn, "balances")
            else:
                await rebalance(conn, "balances", size, dry_run=False)

    anyio.run(regroup, 2)
    members = [
        _start(
            tmp_path, url, f"member{m}", processes, "--until-caught-up",
            *("--member", str(m), "--group-size", "2"),
        )
        for m in range(2)
    ]  # fmt: skip
    assert [m.wait(timeout=120) for m in members] == [0, 0], [m.stderr for m in members]
    anyio.run(regroup, None)
    _finish(tmp_path, url, "after-reset", processes)

    projected, folded = projected_and_folded(url)
    assert projected == folded
    assert len(folded) == 60
