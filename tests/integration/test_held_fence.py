"""A runner reads and writes the held-stream rows of its own share only, and writes them only
while it holds the right to project them.

Found by the random fault suite: a fixed member whose lock session had been cut (a "zombie",
until its next check of the session) replayed a held stream and deleted its row, while the
member's new owner had loaded that row and held the stream out of its read path. The new owner
then moved its checkpoint past the stream's events with nothing left to replay them from, and
the transactional read model missed two events for good."""

from __future__ import annotations

import pytest

from projector.errors import LeaseLostError
from projector.model.events import consumer_group_member
from projector.model.share import Share
from projector.storage import buckets, database
from projector.storage.buckets import Identity
from projector.storage.held import BucketFence, HeldStreams
from projector.storage.member_locks import MemberLock
from projector.testing.events import event
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

GROUP = "fenced"
STREAM = "account-7"
FAILING = event("Deposited", stream=STREAM, position=3, global_position=40, amount=5)


async def _rows(url: str) -> list[tuple[str, int]]:
    conn = await database.connect(url)
    async with conn:
        cursor = await conn.execute(
            "SELECT stream_name, position FROM projector.held_streams WHERE group_name = %s",
            (GROUP,),
        )
        return [(str(name), int(position)) for name, position in await cursor.fetchall()]


async def _gone(conn: database.Connection, pid: int) -> bool:
    row = await (
        await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
    ).fetchone()
    return row == (0,)


async def test_a_member_that_lost_its_lock_neither_writes_nor_releases_a_held_row(
    own_store_url: str,
) -> None:
    url = own_store_url
    observer = await database.connect(url)
    await observer.set_autocommit(True)
    async with (
        observer,
        database.open_pool(url, max_size=2) as pool,
        MemberLock(url, GROUP) as lease,
    ):
        await lease.acquire(standby=False)
        mine = HeldStreams(pool, GROUP, fence=lease.fence())
        await mine.hold(STREAM, FAILING, RuntimeError("refused"), attempts=1, retry_in=0.0)
        (row,) = (await mine.look()).streams
        pid = lease.connection.info.backend_pid
        await observer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        await eventually(lambda: _gone(observer, pid))
        # The next owner takes the lock and loads the row; the zombie must leave it be.
        async with MemberLock(url, GROUP) as successor:
            await successor.acquire(standby=False)
            with pytest.raises(LeaseLostError, match="no longer holds the right"):
                await mine.release(row)
            with pytest.raises(LeaseLostError):
                await mine.hold(STREAM, FAILING, RuntimeError("again"), attempts=2, retry_in=1)
            assert await _rows(url) == [(STREAM, 3)]
            # The owner's own writes pass.
            theirs = HeldStreams(pool, GROUP, fence=successor.fence())
            await theirs.release(row)
            assert await _rows(url) == []


async def test_an_elastic_tenure_writes_held_rows_only_for_buckets_it_still_holds(
    own_store_url: str,
) -> None:
    url = own_store_url
    size = 4
    bucket = consumer_group_member(STREAM, size)
    assert bucket is not None
    me, other = Identity(GROUP, "me", "host", 1), Identity(GROUP, "other", "host", 2)
    conn = await database.connect(url)
    await conn.set_autocommit(True)
    async with conn, database.open_pool(url, max_size=2) as pool:
        await buckets.register(conn, GROUP, size)
        taken = await buckets.acquire(conn, me, [bucket], lease=30)
        share = Share.buckets(taken, size)
        mine = HeldStreams(pool, GROUP, share, BucketFence("me", size, taken))
        await mine.hold(STREAM, FAILING, RuntimeError("refused"), attempts=1, retry_in=0.0)
        assert await _rows(url) == [(STREAM, 3)]
        # Another member takes the bucket (say its lease ran out): this tenure's writes stop.
        await buckets.release(conn, me, taken)
        assert await buckets.acquire(conn, other, [bucket], lease=30) == {bucket: taken[bucket] + 1}
        (row,) = (await mine.look()).streams
        with pytest.raises(LeaseLostError):
            await mine.release(row)
        assert await _rows(url) == [(STREAM, 3)]


async def test_each_runner_looks_at_the_held_rows_of_its_own_share_only(
    own_store_url: str,
) -> None:
    """The look filters rows by the same ownership rule as every read (in SQL): each member
    of a group of 2 sees its own streams' rows, a plain group all of them, id-less names
    included, and an elastic share the rows of its buckets."""
    url = own_store_url
    names = [f"account-{i}" for i in range(12)] + ["account"]
    async with database.open_pool(url, max_size=2) as pool:
        every = HeldStreams(pool, GROUP)
        for index, name in enumerate(names):
            first = event("Deposited", stream=name, position=index, global_position=index + 1)
            await every.hold(name, first, RuntimeError("refused"), attempts=1, retry_in=60)

        async def seen(share: Share) -> set[str]:
            look = await HeldStreams(pool, GROUP, share).look()
            return {held.stream_name for held in look.streams}

        assert await seen(Share.member(0, 1)) == set(names)
        halves = [await seen(Share.member(member, 2)) for member in (0, 1)]
        assert halves[0] | halves[1] == set(names) - {"account"}
        assert not halves[0] & halves[1]
        for member, half in enumerate(halves):
            assert half == {n for n in names if consumer_group_member(n, 2) == member}
        buckets_seen = await seen(Share.buckets({1, 3}, 4))
        assert buckets_seen == {n for n in names if consumer_group_member(n, 4) in {1, 3}}
