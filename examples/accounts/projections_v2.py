"""Version 2 of the balances projection: the same balances, and each account's largest
deposit, a column version 1's table does not have. `projector rebuild start` sets it up in a
schema of its own (its `setup` hook creates the table there), and it projects every event
again beside version 1, which keeps serving until `projector rebuild cutover` (README.md)."""

from __future__ import annotations

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects import postgresql

from projector import Event, Projection
from schema import balances_v2 as table
from schema import create_statement

DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


async def setup(conn: AsyncConnection) -> None:
    await conn.execute(create_statement(table))


async def reset_stream(conn: AsyncConnection, stream_name: str) -> None:
    """For `projector replay`: forget the account, before its events are applied again."""
    statement = table.delete().where(table.c.account_id == stream_name.partition("-")[2])
    compiled = statement.compile(dialect=DIALECT)
    await conn.execute(str(compiled), compiled.params)


balances = Projection(
    "account_balances",
    categories=["account"],
    version=2,
    setup=setup,
    reset_stream=reset_stream,
)


@balances.transactional
async def apply(stream_name: str, events: list[Event], conn: AsyncConnection) -> None:
    deposits = [e.data["amount"] for e in events if e.type == "Deposited"]
    withdrawals = [e.data["amount"] for e in events if e.type == "Withdrawn"]
    statement = postgresql.insert(table).values(
        account_id=stream_name.partition("-")[2],
        balance=sum(deposits) - sum(withdrawals),
        deposits=len(deposits),
        withdrawals=len(withdrawals),
        largest_deposit=max(deposits, default=0),
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.account_id],
        set_={
            "balance": table.c.balance + statement.excluded.balance,
            "deposits": table.c.deposits + statement.excluded.deposits,
            "withdrawals": table.c.withdrawals + statement.excluded.withdrawals,
            "largest_deposit": sa.func.greatest(
                table.c.largest_deposit, statement.excluded.largest_deposit
            ),
        },
    )
    compiled = statement.compile(dialect=DIALECT)
    await conn.execute(str(compiled), compiled.params)
