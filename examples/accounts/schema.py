"""The read model: one row per account, defined with SQLAlchemy Core.

``balances`` is version 1's table, in ``public`` (create it with `create_tables`); version 2
adds each account's largest deposit, in a table its `setup` hook creates in the version's own
schema (`projections_v2`)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

metadata = sa.MetaData()

balances = sa.Table(
    "account_balances",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("deposits", sa.Integer, nullable=False),
    sa.Column("withdrawals", sa.Integer, nullable=False),
)

balances_v2 = sa.Table(
    "account_balances",
    sa.MetaData(),  # its own: the same table name, in version 2's schema
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("deposits", sa.Integer, nullable=False),
    sa.Column("withdrawals", sa.Integer, nullable=False),
    sa.Column("largest_deposit", sa.BigInteger, nullable=False),
)


def create_statement(table: sa.Table) -> str:
    """``CREATE TABLE`` for ``table``, its name unqualified (so a setup hook creates it in the
    version's schema)."""
    return str(CreateTable(table).compile(dialect=postgresql.psycopg.dialect()))  # type: ignore[no-untyped-call]


def create_tables(url: str) -> None:
    """Create the read model's table (a real application would use its own migrations)."""
    import psycopg

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.begin() as connection:
        metadata.create_all(connection)
    engine.dispose()
