"""Bucket leases against a real server: acquire, renew, expire, release, and the fenced commit
that no zombie can pass."""

from __future__ import annotations

from datetime import timedelta

import pytest

from projector.errors import ConfigurationError, LeaseLostError
from projector.storage import buckets, checkpoints
from projector.storage.buckets import Identity
from projector.storage.database import Connection
from tests.support.waiting import eventually

GROUP = "elastic"
A = Identity(GROUP, "a", "host-a", 1)
B = Identity(GROUP, "b", "host-b", 2)
LEASE = 0.5

pytestmark = pytest.mark.anyio


@pytest.fixture
async def conn(own_store_conn: Connection) -> Connection:
    await buckets.register(own_store_conn, GROUP, 4)
    return own_store_conn


async def test_a_group_records_its_bucket_count_once_and_refuses_another(conn: Connection) -> None:
    await buckets.register(conn, GROUP, 4)
    with pytest.raises(ConfigurationError, match="--buckets 4"):
        await buckets.register(conn, GROUP, 8)
    assert [lease.bucket for lease in await buckets.leases(conn, GROUP)] == [0, 1, 2, 3]


async def test_a_bucket_held_by_one_member_cannot_be_taken_by_another(conn: Connection) -> None:
    assert await buckets.acquire(conn, A, [0, 1], lease=30) == {0: 1, 1: 1}
    assert await buckets.acquire(conn, B, [0, 1, 2], lease=30) == {2: 1}


async def test_a_heartbeat_renews_the_lease_and_a_silent_member_loses_it(conn: Connection) -> None:
    await buckets.acquire(conn, A, [0], lease=LEASE)
    taken = (await buckets.leases(conn, GROUP))[0]
    assert await buckets.heartbeat(conn, A, lease=30) == {0: 1}
    renewed = (await buckets.leases(conn, GROUP))[0]
    assert taken.expires_at is not None
    assert renewed.expires_at is not None
    assert renewed.expires_at - taken.expires_at > timedelta(seconds=20)
    assert await buckets.acquire(conn, B, [0], lease=LEASE) == {}
    assert await buckets.live_members(conn, GROUP, lease=30) == ["a"]

    # Its last heartbeat gives it LEASE seconds; then it falls silent, by the server's clock.
    assert await buckets.heartbeat(conn, A, lease=LEASE) == {0: 1}
    await eventually(lambda: _expired(conn))
    assert await buckets.live_members(conn, GROUP, lease=LEASE) == []
    assert await buckets.acquire(conn, B, [0], lease=LEASE) == {0: 2}
    # The silent member, back, learns it lost the bucket at its next heartbeat.
    assert await buckets.heartbeat(conn, A, lease=LEASE) == {}


async def _expired(conn: Connection) -> bool:
    """Whether every bucket of the group may be taken (free, or its lease run out)."""
    return all(lease.free for lease in await buckets.leases(conn, GROUP))


async def test_a_released_bucket_is_free_at_once(conn: Connection) -> None:
    owned = await buckets.acquire(conn, A, [0, 1], lease=30)
    await buckets.release(conn, A, {0: owned[0]})
    assert await buckets.acquire(conn, B, [0, 1], lease=30) == {0: 2}


async def test_the_owner_commits_its_buckets_checkpoints(conn: Connection) -> None:
    owned = await buckets.acquire(conn, A, [0, 1], lease=30)
    positions = {(0, "account"): 10, (1, "account"): 12}
    await buckets.commit_fenced(conn, A, size=4, owned=owned, positions=positions)
    assert await buckets.load(conn, GROUP, [0, 1, 2]) == positions
    rows = await checkpoints.rows(conn, GROUP)
    assert {(row.member, row.size) for row in rows} == {(0, 4), (1, 4)}


async def test_a_zombie_whose_bucket_was_taken_commits_nothing(conn: Connection) -> None:
    zombie = await buckets.acquire(conn, A, [0, 1], lease=LEASE)
    await eventually(lambda: _expired(conn))
    assert await buckets.acquire(conn, B, [1], lease=30) == {1: 2}
    with pytest.raises(LeaseLostError):
        await buckets.commit_fenced(
            conn, A, size=4, owned=zombie, positions={(0, "account"): 5, (1, "account"): 5}
        )
    assert await buckets.load(conn, GROUP, [0, 1]) == {}


async def test_an_expired_lease_commits_nothing_even_when_nobody_took_it(conn: Connection) -> None:
    owned = await buckets.acquire(conn, A, [0], lease=LEASE)
    await eventually(lambda: _expired(conn))
    with pytest.raises(LeaseLostError):
        await buckets.commit_fenced(conn, A, size=4, owned=owned, positions={(0, "account"): 5})
    assert await buckets.load(conn, GROUP, [0]) == {}


async def test_an_old_generation_commits_nothing_after_the_same_member_took_it_again(
    conn: Connection,
) -> None:
    first = await buckets.acquire(conn, A, [0], lease=30)
    await buckets.release(conn, A, first)
    await buckets.acquire(conn, A, [0], lease=30)
    with pytest.raises(LeaseLostError):
        await buckets.commit_fenced(conn, A, size=4, owned=first, positions={(0, "account"): 5})


async def test_a_member_that_leaves_frees_its_buckets_and_its_row(conn: Connection) -> None:
    await buckets.heartbeat(conn, A, lease=30)
    owned = await buckets.acquire(conn, A, [0, 1, 2, 3], lease=30)
    await buckets.leave(conn, A, owned)
    assert await buckets.live_members(conn, GROUP, lease=30) == []
    assert all(lease.free for lease in await buckets.leases(conn, GROUP))
