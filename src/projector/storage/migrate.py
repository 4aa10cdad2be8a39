"""Creating projector's tables (Alembic, ``migrations/``) and, on request, a message store."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.exc import DBAPIError

from projector.storage import database

VERSION_SCHEMA = "projector"  # where migrations/env.py keeps Alembic's version table
_PACKAGE_MIGRATIONS = Path(str(resources.files("projector"))) / "migrations"
# In a source checkout (editable install) migrations/ sits at the top of the repository.
_SOURCE_MIGRATIONS = Path(__file__).resolve().parents[3] / "migrations"


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the wheel, or at the top of a source checkout."""
    for candidate in (_PACKAGE_MIGRATIONS, _SOURCE_MIGRATIONS):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("projector's migrations/ folder is missing from this installation")


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


def upgrade(url: str, revision: str = "head") -> list[str]:
    """Bring projector's own tables (schema ``projector``) up to ``revision``; return what
    was applied, one line per migration (none when they were up to date)."""
    database.connect_sync(url).close()  # fail with our message before SQLAlchemy wraps the error
    engine = create_engine(
        "postgresql+psycopg://", creator=lambda: database.connect_sync(url, translating=False)
    )
    try:
        with engine.begin() as connection:
            config = _alembic_config()
            config.attributes["connection"] = connection
            before = _current(connection)
            command.upgrade(config, revision)
            after = _current(connection)
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.Error):
            raise database.refused(exc.orig, "creating projector's tables") from exc
        raise
    finally:
        engine.dispose()
    return _applied(config, before, after)


def _current(connection: Connection) -> str | None:
    """The revision projector's tables are at (its version table is in schema projector)."""
    options = {"version_table_schema": VERSION_SCHEMA}
    return MigrationContext.configure(connection, opts=options).get_current_revision()


def _applied(config: Config, before: str | None, after: str | None) -> list[str]:
    """The migrations between two revisions, oldest first, as "id: first line of its doc"."""
    if after is None or before == after:
        return []
    scripts = ScriptDirectory.from_config(config)
    steps = list(scripts.iterate_revisions(after, before or "base"))
    return [f"{step.revision}: {(step.doc or '').splitlines()[0]}" for step in reversed(steps)]


def message_store_sql() -> str:
    """projector's own Message DB-compatible store, written from Message DB's interface."""
    return (resources.files("projector.storage") / "sql" / "message_store.sql").read_text()


def install_message_store(url: str) -> bool:
    """Create a Message DB-compatible store; False (and nothing touched) when one exists."""
    with database.connect_sync(url) as conn:
        present = conn.execute("SELECT to_regclass('message_store.messages')").fetchone()
        if present is not None and present[0] is not None:
            return False
        # One script, sent with the simple query protocol (no parameters, many statements).
        conn.execute(message_store_sql().encode())
        return True
