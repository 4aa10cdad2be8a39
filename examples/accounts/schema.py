"""The read model: one row per account, defined with SQLAlchemy Core."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

balances = sa.Table(
    "account_balances",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("deposits", sa.Integer, nullable=False),
    sa.Column("withdrawals", sa.Integer, nullable=False),
)


def create_tables(url: str) -> None:
    """Create the read model's table (a real application would use its own migrations)."""
    import psycopg

    engine = sa.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.begin() as connection:
        metadata.create_all(connection)
    engine.dispose()
