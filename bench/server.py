"""The server a benchmark run uses, and the seeded database it creates there.

The server is ``PROJECTOR_BENCH_DATABASE_URL`` (an admin URL: the run creates its own database
there), else a throwaway cluster from the local PostgreSQL binaries, or with ``--reuse`` a
persistent one under /var/tmp that keeps its seeded databases between runs. Both local clusters
run with durability off (``fsync=off``, ``synchronous_commit=off``), as the tests' clusters do.

The store is Eventide's real Message DB 1.3.1 (fetched from npm with the tests' own helper), so
that the consumer-group baseline is Message DB's own ``get_category_messages``; ``--store own``
(or no npm) uses projector's own compatible store instead, and the report says so.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from projector.localpg import LocalCluster, temporary_cluster
from projector.storage import migrate
from projector.storage.database import describe

URL_VARIABLE = "PROJECTOR_BENCH_DATABASE_URL"
PERSISTENT_DATA_DIR = Path("/var/tmp/projector-bench-pg")
MESSAGE_DB_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "message-db"


@dataclass(frozen=True)
class Server:
    """A server on which the run may create databases."""

    admin_url: str
    description: str

    def url_for(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_url, dbname=dbname)

    def exists(self, dbname: str) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            return row.fetchone() is not None

    def create(self, dbname: str) -> str:
        self._admin(sql.SQL("CREATE DATABASE {} TEMPLATE template0"), dbname)
        return self.url_for(dbname)

    def drop(self, dbname: str) -> None:
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)"), dbname)

    def _admin(self, statement: sql.SQL, dbname: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement.format(sql.Identifier(dbname)))


@contextmanager
def open_server(*, reuse: bool) -> Iterator[Server]:
    """The bench URL's server, else a local cluster (persistent with ``reuse``)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield Server(url, f"{describe(url)} ({URL_VARIABLE})")
    elif reuse:
        with LocalCluster(PERSISTENT_DATA_DIR, durable=False, tcp=True) as cluster:
            yield Server(cluster.url, f"persistent local cluster in {PERSISTENT_DATA_DIR}")
    else:
        with temporary_cluster() as cluster:
            yield Server(cluster.url, "throwaway local cluster (durability off)")


def choose_store(requested: str) -> tuple[str, Path | None]:
    """``("messagedb", scripts)`` when Message DB can be had, else ``("own", None)``."""
    if requested == "own":
        return "own", None
    # The tests' helper, reused: it fetches Message DB once into .cache/ with npm.
    from tests.support import messagedb
    from tests.support.postgres import NoTestServerError

    try:
        return "messagedb", messagedb.database_scripts(MESSAGE_DB_CACHE)
    except NoTestServerError as exc:
        if requested == "messagedb":
            raise SystemExit(f"bench: cannot install Message DB: {exc}") from exc
        print(f"bench: no Message DB ({exc}); using projector's own store", file=sys.stderr)
        return "own", None


def install_store(url: str, store: str, scripts: Path | None) -> None:
    """A message store (Message DB or projector's own) and projector's tables."""
    if store == "messagedb":
        from tests.support import messagedb

        assert scripts is not None
        messagedb.install(url, scripts)
    else:
        migrate.install_message_store(url)
    migrate.upgrade(url)


def run_id() -> str:
    """A short id that keeps this run's groups, categories and tables apart from others'."""
    return uuid.uuid4().hex[:8]
