"""examples/accounts works as its README says, and its balances survive a replay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "accounts"

FOLD = """
SELECT split_part(stream_name, '-', 2),
       sum(CASE WHEN type = 'Withdrawn' THEN -1 ELSE 1 END * (data->>'amount')::bigint)
FROM message_store.messages GROUP BY 1
"""


def _run(url: str, *command: str) -> str:
    result = subprocess.run(
        command,
        cwd=EXAMPLE,
        env={**os.environ, "PROJECTOR_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _balances(url: str) -> tuple[dict[str, int], dict[str, int]]:
    with psycopg.connect(url) as conn:
        projected: dict[str, int] = dict(
            conn.execute("SELECT account_id, balance FROM account_balances").fetchall()
        )
        folded = {k: int(v) for k, v in conn.execute(FOLD).fetchall()}
    return projected, folded


def test_the_example_projects_balances_exactly_once_even_after_a_reset(
    empty_database_url: str,
) -> None:
    url, python = empty_database_url, sys.executable
    _run(url, python, "-m", "projector", "migrate", "--message-store")
    _run(
        url,
        python,
        "-c",
        "import schema, os; schema.create_tables(os.environ['PROJECTOR_DATABASE_URL'])",
    )
    assert "wrote 300 events" in _run(url, python, "write_events.py", url, "300")
    _run(url, python, "-m", "projector", "run", "projections:balances", "--until-caught-up")
    projected, folded = _balances(url)
    assert projected == folded

    _run(
        url,
        python,
        "-m",
        "projector",
        "checkpoints",
        "reset",
        "--group",
        "account_balances",
        "--yes",
    )
    _run(url, python, "-m", "projector", "run", "projections:balances", "--until-caught-up")

    assert _balances(url)[0] == folded
