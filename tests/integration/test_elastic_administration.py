"""An elastic group's members hold bucket leases, not member locks: administration refuses
while any runs, status shows them running, and a projection depending on the group sees it up.

The leases are taken with storage's own statements, as a member's heartbeat would.
"""

from __future__ import annotations

import pytest

from projector.admin import groups, status
from projector.errors import ConfigurationError, MemberBusyError
from projector.model.dependencies import Dependency
from projector.runtime import dependencies
from projector.storage import buckets, checkpoints
from projector.storage.buckets import Identity
from projector.storage.database import Connection

GROUP = "elastic_admin"
MEMBER = Identity(GROUP, "a", "host-a", 1)
BUCKETS = 4

pytestmark = pytest.mark.anyio


@pytest.fixture
async def conn(own_store_conn: Connection) -> Connection:
    """A group of BUCKETS buckets, each with a checkpoint in "account"."""
    await buckets.register(own_store_conn, GROUP, BUCKETS)
    for bucket in range(BUCKETS):
        await checkpoints.write(own_store_conn, GROUP, bucket, BUCKETS, "account", 1)
    return own_store_conn


async def test_checkpoint_changes_refuse_while_an_elastic_member_holds_buckets(
    conn: Connection,
) -> None:
    await buckets.acquire(conn, MEMBER, [0, 1], lease=30)
    with pytest.raises(MemberBusyError, match="elastic member a"):
        await groups.set_checkpoint(conn, GROUP, "account", 1, member=2)
    with pytest.raises(MemberBusyError, match="elastic member a"):
        await groups.reset_group(conn, GROUP)
    assert {row.position for row in await checkpoints.rows(conn, GROUP)} == {1}

    await buckets.leave(conn, MEMBER, {0: 1, 1: 1})
    assert [row.member for row in await groups.reset_group(conn, GROUP)] == [0, 1, 2, 3]


async def test_an_elastic_group_is_never_rebalanced(conn: Connection) -> None:
    with pytest.raises(ConfigurationError, match="elastic"):
        await groups.rebalance(conn, GROUP, 2, dry_run=True)
    assert {row.size for row in await checkpoints.rows(conn, GROUP)} == {BUCKETS}


async def test_status_and_dependents_see_the_buckets_a_member_holds_as_running(
    conn: Connection,
) -> None:
    await buckets.acquire(conn, MEMBER, [0, 1], lease=30)
    running = {row.member: row.running for row in await status.collect(conn, GROUP)}
    assert running == {0: True, 1: True, 2: False, 3: False}
    upstream = await dependencies.measure(conn, Dependency(GROUP))
    assert upstream.pause == f"upstream {GROUP}-2, {GROUP}-3 not running"

    await buckets.acquire(conn, MEMBER, [2, 3], lease=30)
    assert (await dependencies.measure(conn, Dependency(GROUP))).pause is None
