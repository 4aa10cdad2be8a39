"""The local cluster launcher: re-attach, restarts, throwaway clusters, and its errors."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from projector.errors import ConfigurationError
from projector.localpg import LocalCluster, temporary_cluster
from tests.support.postgres import Unavailable, give_up, require_server_binaries

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
    except Unavailable as exc:
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
    monkeypatch.setenv("PATH", str(tmp_path))
    expected = "install postgresql or set PROJECTOR_DATABASE_URL"
    with pytest.raises(ConfigurationError, match=expected):
        LocalCluster(tmp_path / "pg")


def test_a_failed_start_reports_the_servers_complaint(data_dir: Path) -> None:
    cluster = LocalCluster(data_dir)
    cluster.init()
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write("no_such_setting = 1\n")

    with pytest.raises(ConfigurationError, match='unrecognized configuration parameter "no_such'):
        cluster.start()


@pytest.mark.skipif(not AS_ROOT, reason="only root can make a folder belong to another user")
def test_a_data_folder_of_another_user_is_refused(data_dir: Path) -> None:
    data_dir.mkdir(parents=True)
    nobody = 65534
    os.chown(data_dir, nobody, nobody)

    with pytest.raises(ConfigurationError, match="belongs to another user"):
        LocalCluster(data_dir).init()
