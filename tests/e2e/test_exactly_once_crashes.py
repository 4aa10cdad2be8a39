"""A transactional projection killed with SIGKILL again and again during a catch-up, then run by
a consumer group that is rebalanced and reset: its balances still equal a fold of the events."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import psycopg

from projector.ops.groups import rebalance, reset_group
from tests.support.balances import projected_and_folded, write_transactions

HANDLERS = """
from tests.support.balances import balances_projection

# Slow enough that the kills land mid-catch-up, between handled spans and checkpoint commits.
balances = balances_projection(delay=0.005)
"""


def _projector(workdir: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROJECTOR_DATABASE_URL": url, "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "projector", "run", "balances_projection:balances"]
    return subprocess.Popen(
        [*command, "-c", "account", "--batch-size", "20", "--checkpoint-interval", "0.2", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finish(workdir: Path, url: str, *args: str) -> None:
    process = _projector(workdir, url, "--until-caught-up", *args)
    assert process.wait(timeout=120) == 0


def test_balances_survive_sigkills_a_rebalance_and_a_reset(
    tmp_path: Path, own_store_url: str
) -> None:
    (tmp_path / "balances_projection.py").write_text(textwrap.dedent(HANDLERS))
    anyio.run(lambda: write_transactions(own_store_url, accounts=60, events=3000, seed=5))
    rng = random.Random(5)

    for _ in range(4):
        process = _projector(tmp_path, own_store_url)
        time.sleep(rng.uniform(0.8, 1.6))
        process.kill()
        process.wait()
    _finish(tmp_path, own_store_url)

    async def regroup(size: int | None) -> None:
        async with await psycopg.AsyncConnection.connect(own_store_url) as conn:
            if size is None:
                await reset_group(conn, "balances")
            else:
                await rebalance(conn, "balances", size, dry_run=False)

    anyio.run(regroup, 2)
    members = [
        _projector(
            tmp_path, own_store_url, "--until-caught-up", "--member", str(m), "--group-size", "2"
        )
        for m in range(2)
    ]
    assert [m.wait(timeout=120) for m in members] == [0, 0]
    anyio.run(regroup, None)
    _finish(tmp_path, own_store_url)

    projected, folded = projected_and_folded(own_store_url)
    assert projected == folded
    assert len(folded) == 60
