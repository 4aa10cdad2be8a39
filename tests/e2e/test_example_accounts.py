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


CREATE_TABLES = "import schema, os; schema.create_tables(os.environ['PROJECTOR_DATABASE_URL'])"
LARGEST = """
SELECT split_part(stream_name, '-', 2), max((data->>'amount')::bigint)
FROM message_store.messages WHERE type = 'Deposited' GROUP BY 1
"""


def test_the_example_deploys_its_schema_change_with_no_downtime(empty_database_url: str) -> None:
    """The README's schema change: version 2 built beside version 1, readers cut over."""
    url, python = empty_database_url, sys.executable
    projector = (python, "-m", "projector")
    _run(url, *projector, "migrate", "--message-store")
    _run(url, python, "-c", CREATE_TABLES)
    _run(url, python, "write_events.py", url, "300")
    _run(url, *projector, "run", "projections:balances", "--until-caught-up")
    env = {**os.environ, "PROJECTOR_DATABASE_URL": url}
    started = []
    try:
        for target in ("projections:balances", "projections_v2:balances"):
            if target.startswith("projections_v2"):
                assert "version 2 of account_balances: building" in _run(
                    url, *projector, "rebuild", "start", target
                )
            started.append(
                subprocess.Popen(
                    [*projector, "run", target, "--checkpoint-interval", "0.2"],
                    cwd=EXAMPLE,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        _run(url, python, "write_events.py", url, "200")
        out = _run(
            url,
            *projector,
            *("rebuild", "cutover", "--projection", "account_balances", "--max-lag", "0"),
            "--query",
            "SELECT account_id, balance, deposits, withdrawals FROM account_balances",
        )
        assert "version 2 of account_balances is live" in out
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT account_id, balance, largest_deposit FROM account_balances.account_balances"
            ).fetchall()
            largest = {k: int(v) for k, v in conn.execute(LARGEST).fetchall()}
            folded = {k: int(v) for k, v in conn.execute(FOLD).fetchall()}
        assert {a: b for a, b, _ in rows} == folded
        assert {a: d for a, _, d in rows if d} == largest
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=60)
    retire = ("rebuild", "retire", "--projection", "account_balances", "--version", "1", "--yes")
    out = _run(url, *projector, *retire)
    assert "its tables, in public, are left alone" in out
