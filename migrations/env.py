"""Alembic environment for projector's own tables (schema ``projector``).

projector calls Alembic programmatically (``projector migrate``) and hands it a SQLAlchemy
connection in ``config.attributes["connection"]``; running ``alembic`` by hand with
``-x url=postgresql://...`` works too.
"""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import Connection, create_engine, text

SCHEMA = "projector"


def _run(connection: Connection) -> None:
    # The version table lives in our schema, so projector never collides with a user's Alembic.
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        version_table_schema=SCHEMA,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database with: alembic -x url=postgresql://... upgrade head")
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.begin() as connection:
        _run(connection)


if context.is_offline_mode():
    raise SystemExit("projector's migrations run online only: use `projector migrate`")
_main()
