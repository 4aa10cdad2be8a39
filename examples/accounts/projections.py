"""The balances projection: SQLAlchemy Core statements run on projector's transaction, so each
event is applied exactly once (projector records the stream's position in the same commit)."""

from __future__ import annotations

from psycopg import AsyncConnection
from sqlalchemy.dialects import postgresql

from projector import Event, Projection
from schema import balances as table

DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]

balances = Projection("account_balances", categories=["account"])


@balances.transactional
async def apply(stream_name: str, events: list[Event], conn: AsyncConnection) -> None:
    deposits = [e for e in events if e.type == "Deposited"]
    withdrawals = [e for e in events if e.type == "Withdrawn"]
    delta = sum(e.data["amount"] for e in deposits) - sum(e.data["amount"] for e in withdrawals)
    statement = postgresql.insert(table).values(
        account_id=stream_name.partition("-")[2],
        balance=delta,
        deposits=len(deposits),
        withdrawals=len(withdrawals),
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.account_id],
        set_={
            "balance": table.c.balance + statement.excluded.balance,
            "deposits": table.c.deposits + statement.excluded.deposits,
            "withdrawals": table.c.withdrawals + statement.excluded.withdrawals,
        },
    )
    compiled = statement.compile(dialect=DIALECT)
    await conn.execute(str(compiled), compiled.params)
