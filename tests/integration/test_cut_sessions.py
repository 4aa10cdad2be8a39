"""Sessions cut at the moments the random fault suite found raw driver errors escaping:
while a connection is being configured, between the pool's probe and its first connection,
and while a hot standby waits for its member's lock. Each must end in the one clear
DatabaseUnavailableError (which runners retry on and the CLI prints on one line), never in
psycopg's or the pool's own exception."""

from __future__ import annotations

import anyio
import pytest

from projector.errors import DatabaseUnavailableError
from projector.storage import database
from projector.storage.database import Connection
from projector.storage.member_locks import MemberLock
from tests.support.proxy import cutting_proxy
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_a_session_cut_while_it_is_configured_is_a_clear_cannot_connect(
    own_store_url: str,
) -> None:
    with cutting_proxy(own_store_url, cut=lambda _: True) as proxy:
        with pytest.raises(DatabaseUnavailableError, match=r"^cannot connect to the database"):
            await database.connect(proxy.url, connect_timeout=2)
        assert proxy.cuts == 1


async def test_a_pool_cut_off_after_its_probe_reports_cannot_connect(own_store_url: str) -> None:
    # The probe (connection 0) gets through; every connection after it is cut, so the pool
    # never opens and the probe, made again, says why.
    with cutting_proxy(own_store_url, cut=lambda number: number > 0) as proxy:
        with pytest.raises(DatabaseUnavailableError, match=r"^cannot connect to the database"):
            async with database.open_pool(proxy.url, max_size=2, connect_timeout=1):
                pytest.fail("the pool opened though every connection was cut")
        assert proxy.cuts >= 2


async def test_a_pool_whose_first_connection_is_cut_opens_once_the_network_is_back(
    own_store_url: str,
) -> None:
    with cutting_proxy(own_store_url, cut=lambda number: number == 1) as proxy:
        async with (
            database.open_pool(proxy.url, max_size=2, connect_timeout=2) as pool,
            pool.connection() as conn,
        ):
            assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        assert proxy.cuts == 1


async def test_a_standby_whose_session_is_cut_while_it_waits_gets_a_clear_error(
    own_store_url: str, own_store_conn: Connection
) -> None:
    async with (
        MemberLock(own_store_url, "cut", lease_timeout=2) as running,
        MemberLock(own_store_url, "cut", lease_timeout=2) as standby,
    ):
        await running.acquire(standby=False)
        waiting_pid = standby.connection.info.backend_pid

        async def cut_the_standby() -> None:
            # Cut once it polls: it tried the lock, found it held, and asked who holds it.
            await eventually(lambda: _asked_for_the_holder(own_store_conn, waiting_pid))
            await own_store_conn.execute("SELECT pg_terminate_backend(%s)", [waiting_pid])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(cut_the_standby)
            with (
                anyio.fail_after(10),
                pytest.raises(DatabaseUnavailableError, match="lost the database"),
            ):
                await standby.acquire(standby=True)


async def _asked_for_the_holder(conn: Connection, pid: int) -> bool:
    row = await (
        await conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])
    ).fetchone()
    return row is not None and "pg_locks" in str(row[0])
