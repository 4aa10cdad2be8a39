"""Write random deposits and withdrawals: python write_events.py DATABASE_URL [COUNT]."""

from __future__ import annotations

import random
import sys

import anyio

from projector import connect, write_message


async def main(url: str, count: int) -> None:
    rng = random.Random()  # noqa: S311 (sample data)
    conn = await connect(url)
    async with conn, conn.transaction():
        for _ in range(count):
            account = f"account-{rng.randrange(20)}"
            kind = "Withdrawn" if rng.random() < 0.3 else "Deposited"
            await write_message(conn, account, kind, {"amount": rng.randrange(1, 500)})
    print(f"wrote {count} events")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
