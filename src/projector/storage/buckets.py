"""Elastic groups in SQL: the group's bucket count, its members' heartbeats, bucket leases, and
the fenced checkpoint commit.

An elastic group of B buckets keeps its checkpoints as a fixed group of size B whose members are
buckets (rows ``(group, member=bucket, group_size=B, category)``). A process owns a bucket while
it holds the bucket's row in ``projector.bucket_leases``: ``owner`` is its member id, and
``expires_at`` is pushed forward by every heartbeat. Taking a bucket (free, or expired) bumps its
``generation``.

Why no zombie can commit (the fence): a bucket's checkpoint is written only by `commit_fenced`,
one statement that locks the lease rows of every bucket it writes ``FOR SHARE`` and writes
nothing unless each is still ``owner = me``, at the generation this tenure took, and not
expired. Taking a bucket is an UPDATE of the same row, so it waits for a commit in progress and
a commit waits for a take in progress; the server's clock alone decides expiry. Hence a commit
either precedes the take (and the taker loads it), or sees the new owner and writes nothing. A
process that was silent past its lease (SIGSTOP, a frozen VM) finds its leases expired or taken
at its next commit, writes nothing, and ends its tenure (LeaseLostError).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from projector.errors import BucketCountMismatchError, LeaseLostError
from projector.storage.database import Connection

REGISTER = """
INSERT INTO projector.elastic_groups (group_name, buckets) VALUES (%(group)s, %(buckets)s)
ON CONFLICT (group_name) DO NOTHING
"""

STORED_BUCKETS = "SELECT buckets FROM projector.elastic_groups WHERE group_name = %(group)s"

# A fixed runner's role needs no right on the elastic tables (docs: Privileges and connections).
MAY_READ_GROUPS = "SELECT has_table_privilege('projector.elastic_groups', 'SELECT')"

CREATE_LEASES = """
INSERT INTO projector.bucket_leases (group_name, bucket)
SELECT %(group)s, bucket FROM generate_series(0, %(buckets)s - 1) AS bucket
ON CONFLICT (group_name, bucket) DO NOTHING
"""

# One round trip per heartbeat: the member's row says it is alive, and its leases are pushed
# forward. A lease is renewed only while this member still owns it: a bucket taken by another
# after this member fell silent is not in the answer, which is how the member learns it lost it.
HEARTBEAT = """
WITH seen AS (
    INSERT INTO projector.elastic_members (group_name, member_id, host, pid)
    VALUES (%(group)s, %(member)s, %(host)s, %(pid)s)
    ON CONFLICT (group_name, member_id) DO UPDATE SET heartbeat_at = now()
)
UPDATE projector.bucket_leases
SET expires_at = now() + make_interval(secs => %(lease)s)
WHERE group_name = %(group)s AND owner = %(member)s
RETURNING bucket, generation
"""

LIVE_MEMBERS = """
SELECT member_id FROM projector.elastic_members
WHERE group_name = %(group)s AND heartbeat_at > now() - make_interval(secs => %(lease)s)
ORDER BY member_id
"""

LEASES = """
SELECT bucket, owner, generation, nullif(expires_at, '-infinity'),
       owner IS NULL OR expires_at <= now()
FROM projector.bucket_leases WHERE group_name = %(group)s
ORDER BY bucket
"""

MEMBERS = """
SELECT member_id, host, pid, started_at, heartbeat_at,
       extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
FROM projector.elastic_members WHERE group_name = %(group)s
ORDER BY member_id
"""

ACQUIRE = """
UPDATE projector.bucket_leases
SET owner = %(member)s, generation = generation + 1,
    expires_at = now() + make_interval(secs => %(lease)s)
WHERE group_name = %(group)s AND bucket = ANY(%(buckets)s::integer[])
  AND (owner IS NULL OR expires_at <= now())
RETURNING bucket, generation
"""

RELEASE = """
UPDATE projector.bucket_leases SET owner = NULL, expires_at = '-infinity'
WHERE group_name = %(group)s AND owner = %(member)s
  AND (bucket, generation) IN (
      SELECT * FROM unnest(%(buckets)s::integer[], %(generations)s::bigint[]))
"""

# Buckets a member holds now (lease unexpired), with their owners; FOR UPDATE in the
# administrative variant, so that no member takes one until the caller's transaction ends.
HELD = """
SELECT bucket, owner FROM projector.bucket_leases
WHERE group_name = %(group)s AND owner IS NOT NULL AND expires_at > now()
ORDER BY bucket
"""
LOCK_LEASES = """
SELECT bucket, owner, owner IS NOT NULL AND expires_at > now()
FROM projector.bucket_leases WHERE group_name = %(group)s
ORDER BY bucket
FOR UPDATE
"""

LEAVE = """
DELETE FROM projector.elastic_members WHERE group_name = %(group)s AND member_id = %(member)s
"""

# The fence and the write are one statement (see the module's docstring): `held` locks the
# lease rows and tells whether every one is still this tenure's; the INSERT writes only then.
COMMIT_FENCED = """
WITH held AS (
    SELECT bucket FROM projector.bucket_leases
    WHERE group_name = %(group)s AND owner = %(member)s AND expires_at > now()
      AND (bucket, generation) IN (
          SELECT * FROM unnest(%(buckets)s::integer[], %(generations)s::bigint[]))
    FOR SHARE
), fence AS (
    SELECT count(*) = cardinality(%(buckets)s::integer[]) AS ok FROM held
), written AS (
    INSERT INTO projector.checkpoints
        (group_name, member, group_size, category, position, updated_at)
    SELECT %(group)s, c.bucket, %(size)s, c.category, c.position, now()
    FROM fence,
         unnest(%(row_buckets)s::integer[], %(row_categories)s::text[],
                %(row_positions)s::bigint[]) AS c (bucket, category, position)
    WHERE fence.ok
    ON CONFLICT (group_name, member, category)
    DO UPDATE SET position = EXCLUDED.position, group_size = EXCLUDED.group_size,
                  updated_at = EXCLUDED.updated_at
    RETURNING 1
)
SELECT fence.ok, (SELECT count(*) FROM written) FROM fence
"""

LOAD = """
SELECT member, category, position FROM projector.checkpoints
WHERE group_name = %(group)s AND member = ANY(%(buckets)s::integer[])
"""

Owned = Mapping[int, int]
"""The buckets a tenure holds, each with the generation it took it at."""


@dataclass(frozen=True, slots=True)
class Lease:
    bucket: int
    owner: str | None
    generation: int
    expires_at: datetime | None  # None: never taken, or released
    free: bool  # nobody holds it, or its holder let it expire: it may be taken


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float  # seconds since its last heartbeat


async def register(conn: Connection, group: str, buckets: int) -> None:
    """Record the group's bucket count the first time, create its lease rows, and refuse a
    start with another count."""
    async with conn.transaction():
        await conn.execute(REGISTER, {"group": group, "buckets": buckets})
        stored = await stored_buckets(conn, group)
        if stored != buckets:
            raise BucketCountMismatchError(
                f"elastic group {group!r} has {stored} buckets, but this runner was started "
                f"with --buckets {buckets}: start it with --buckets {stored} (the count is set "
                "once per group)"
            )
        await conn.execute(CREATE_LEASES, {"group": group, "buckets": buckets})


async def stored_buckets(conn: Connection, group: str) -> int | None:
    """The group's bucket count, None when it is not an elastic group, or when this role may
    not read the elastic groups (no elastic member can run as it: joining needs that right)."""
    allowed = await (await conn.execute(MAY_READ_GROUPS)).fetchone()
    if allowed is None or not allowed[0]:
        return None
    row = await (await conn.execute(STORED_BUCKETS, {"group": group})).fetchone()
    return None if row is None else int(row[0])


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a member is, as its row shows it."""

    group: str
    member_id: str
    host: str
    pid: int


async def heartbeat(conn: Connection, me: Identity, *, lease: float) -> dict[int, int]:
    """Say ``me`` is alive and renew its leases; the buckets it still owns, with generations."""
    params = {
        "group": me.group,
        "member": me.member_id,
        "host": me.host,
        "pid": me.pid,
        "lease": lease,
    }
    rows = await (await conn.execute(HEARTBEAT, params)).fetchall()
    return {int(bucket): int(generation) for bucket, generation in rows}


async def live_members(conn: Connection, group: str, *, lease: float) -> list[str]:
    """The members whose last heartbeat is within ``lease`` seconds, by id."""
    rows = await (await conn.execute(LIVE_MEMBERS, {"group": group, "lease": lease})).fetchall()
    return [str(row[0]) for row in rows]


async def leases(conn: Connection, group: str) -> list[Lease]:
    rows = await (await conn.execute(LEASES, {"group": group})).fetchall()
    return [
        Lease(int(b), owner, int(g), expires, bool(free)) for b, owner, g, expires, free in rows
    ]


async def held(conn: Connection, group: str) -> dict[int, str]:
    """The buckets a live member holds now, with their owners (empty for a fixed group)."""
    if await stored_buckets(conn, group) is None:
        return {}
    rows = await (await conn.execute(HELD, {"group": group})).fetchall()
    return {int(bucket): str(owner) for bucket, owner in rows}


async def lock_held(conn: Connection, group: str) -> dict[int, str]:
    """Like `held`, with every lease row of the group locked for the rest of ``conn``'s
    transaction: no member takes a bucket meanwhile (administration refuses while any runs)."""
    if await stored_buckets(conn, group) is None:
        return {}
    rows = await (await conn.execute(LOCK_LEASES, {"group": group})).fetchall()
    return {int(bucket): str(owner) for bucket, owner, live in rows if live}


async def members(conn: Connection, group: str) -> list[Member]:
    rows = await (await conn.execute(MEMBERS, {"group": group})).fetchall()
    return [Member(*row) for row in rows]


async def acquire(
    conn: Connection, me: Identity, buckets: Iterable[int], *, lease: float
) -> dict[int, int]:
    """Take those of ``buckets`` that are free or expired; the ones taken, with generations."""
    params = {"group": me.group, "member": me.member_id, "buckets": sorted(buckets), "lease": lease}
    rows = await (await conn.execute(ACQUIRE, params)).fetchall()
    return {int(bucket): int(generation) for bucket, generation in rows}


async def release(conn: Connection, me: Identity, owned: Owned) -> None:
    """Give up buckets (only at the generations given: a bucket taken since is not touched)."""
    if not owned:
        return
    buckets = sorted(owned)
    params = {
        "group": me.group,
        "member": me.member_id,
        "buckets": buckets,
        "generations": [owned[bucket] for bucket in buckets],
    }
    await conn.execute(RELEASE, params)


async def leave(conn: Connection, me: Identity, owned: Owned) -> None:
    """Release every bucket and remove the member's row: the others rebalance at once."""
    async with conn.transaction():
        await release(conn, me, owned)
        await conn.execute(LEAVE, {"group": me.group, "member": me.member_id})


async def commit_fenced(
    conn: Connection,
    me: Identity,
    *,
    size: int,
    owned: Owned,
    positions: Mapping[tuple[int, str], int],
) -> None:
    """Write ``positions`` ((bucket, category) -> position) if ``owned`` is still all this
    tenure's, else write nothing and raise LeaseLostError."""
    if not owned:
        return
    buckets = sorted(owned)
    keys = sorted(positions)
    params = {
        "group": me.group,
        "member": me.member_id,
        "size": size,
        "buckets": buckets,
        "generations": [owned[bucket] for bucket in buckets],
        "row_buckets": [bucket for bucket, _ in keys],
        "row_categories": [category for _, category in keys],
        "row_positions": [positions[key] for key in keys],
    }
    row = await (await conn.execute(COMMIT_FENCED, params)).fetchone()
    if row is None or not row[0]:
        raise LeaseLostError(
            f"{me.member_id} no longer holds every bucket it commits for in group {me.group!r} "
            "(its lease expired or was taken): nothing committed, starting over"
        )


async def load(conn: Connection, group: str, buckets: Iterable[int]) -> dict[tuple[int, str], int]:
    """The committed checkpoints of ``buckets``: (bucket, category) -> position."""
    params = {"group": group, "buckets": sorted(buckets)}
    rows = await (await conn.execute(LOAD, params)).fetchall()
    return {(int(bucket), str(category)): int(position) for bucket, category, position in rows}
