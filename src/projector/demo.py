"""``projector demo``: write sample account events and project them into a balances table.

The projection here is also the docs' example of an idempotent handler: each account row
remembers the last stream position it applied, so a redelivered event changes nothing (the
statements are `projector.storage.demo`'s).
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import anyio
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from projector import Event, Projection, write_message
from projector.cli.progress import terminal_bar
from projector.errors import ConfigurationError
from projector.localpg import MARKER, LocalCluster, default_data_dir
from projector.runner import Runner
from projector.settings import Settings
from projector.storage import demo as tables
from projector.storage.database import Pool, configure, connect, connect_sync

CATEGORY = "demo_account"  # its own: the docs' examples use "account"
DATABASE = "projector_demo"

balances = Projection("demo_balances", categories=[CATEGORY])
_pools: dict[str, Pool] = {}


async def _pool() -> Pool:
    """One pool per process for the read model, from the same URL projector reads."""
    url = os.environ["PROJECTOR_DATABASE_URL"]
    if url not in _pools:
        pool: Pool = AsyncConnectionPool(
            url, min_size=1, max_size=4, configure=configure, open=False
        )
        await pool.open(wait=True)
        _pools[url] = pool
    return _pools[url]


@balances.handler
async def apply_balances(stream_name: str, events: list[Event]) -> None:
    pool = await _pool()
    async with pool.connection() as conn:
        await tables.apply(
            conn,
            stream_name.partition("-")[2],
            positions=[e.position for e in events],
            deltas=[_amount(e) for e in events],
        )


def _amount(event: Event) -> int:
    amount = int(event.data["amount"])
    return -amount if event.type == "Withdrawn" else amount


async def write_sample_events(url: str, *, accounts: int, events: int, seed: int = 7) -> None:
    """``events`` deposits and withdrawals spread over ``accounts`` account streams."""
    rng = random.Random(seed)  # noqa: S311 (sample data, not secrets)
    conn = await connect(url)
    async with conn, conn.transaction():
        await tables.create_tables(conn)
        for _ in range(events):
            account = f"{CATEGORY}-{uuid.UUID(int=rng.randrange(accounts))}"
            kind = rng.choice(("Deposited", "Deposited", "Withdrawn"))
            await write_message(conn, account, kind, {"amount": rng.randrange(1, 100)})


async def check_balances(url: str) -> tuple[int, int, int]:
    """(accounts, total balance in the read model, total computed straight from the events)."""
    conn = await connect(url)
    async with conn:
        return await tables.balances(conn, CATEGORY)


async def close_pools() -> None:
    with anyio.CancelScope(shield=True):
        for pool in _pools.values():
            await pool.close()
        _pools.clear()


def local_database(data_dir: Path | None = None) -> tuple[str, Path]:
    """The URL of the demo database in projector's own local cluster, started if need be."""
    cluster = LocalCluster(data_dir or default_data_dir())
    server_url = cluster.ensure_running()
    with connect_sync(server_url) as conn:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        tables.ensure_database(conn, DATABASE)
    return cluster.url_for(DATABASE), cluster.data_dir


def is_own_database(url: str, data_dir: Path | None = None) -> bool:
    """Whether ``url`` names the demo's database in its own local cluster: the URL the demo
    prints for ``export PROJECTOR_DATABASE_URL``, whose host is the cluster's socket folder."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return False
    folder = (data_dir or default_data_dir()).absolute()
    return (
        params.get("dbname") == DATABASE
        and params.get("host") == str(folder)
        and (folder / MARKER).is_file()
    )


def stop_local(data_dir: Path | None = None) -> bool:
    """Stop the demo's local cluster; False when it was not running. A server the demo did
    not make is refused, not stopped."""
    cluster = LocalCluster(data_dir or default_data_dir())
    if cluster.running_port() is None:
        return False
    if not cluster.made_here:
        raise ConfigurationError(
            f"{cluster.data_dir} holds a PostgreSQL server that projector demo did not make: "
            "it is left running (stop it yourself with pg_ctl)"
        )
    cluster.stop()
    return True


async def run(url: str, *, accounts: int, events: int) -> tuple[int, int, int]:
    """Write sample events, project them until caught up; return `check_balances`' figures."""
    os.environ["PROJECTOR_DATABASE_URL"] = url  # the handler's read-model pool uses it
    await write_sample_events(url, accounts=accounts, events=events)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=url,
        until_caught_up=True,
        checkpoint_interval=0.5,
    )
    try:
        await Runner(balances, settings, progress_bar=terminal_bar).run()
    finally:
        await close_pools()
    return await check_balances(url)
