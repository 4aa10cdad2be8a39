"""Member indexes: an opt-in index per consumer-group size, so that members read their own rows.

Without one, every member of a group of ``n`` reads its category's rows in order and hashes each
stream name to keep a quarter (for ``n`` = 4) of them: each member does the work of the whole
group. The member index for ``n`` is on ``(category, member, global_position)``, with the member
computed by the same expression the reads use (`message_store.member_hash`), so a member's read is a
range scan of its own rows, as fast as a plain group's.

It is opt-in (``projector migrate --member-index N``) because it changes the message store's
table: one more index entry per write, for each size installed. It is built ``CONCURRENTLY``, so
writers are not blocked while it is built; a build that failed leaves an invalid index, which
the next install replaces. ``projector rebalance`` to a size with no index works, only slower.
"""

from __future__ import annotations

import logging

from psycopg import sql

from projector.errors import ConfigurationError
from projector.model.buckets import MAX_BUCKETS
from projector.model.events import MAX_GROUP_SIZE
from projector.storage import database, message_store
from projector.storage.database import Connection, Pool

logger = logging.getLogger(__name__)

# An index's validity; none at all when the index does not exist.
INDEX_STATE = """
SELECT i.indisvalid
FROM pg_index AS i
WHERE i.indexrelid = to_regclass(%(index)s)
"""


def index_name(size: int) -> str:
    """The index's name in schema message_store, e.g. ``projector_member_4``."""
    return f"projector_member_{int(size)}"


def create_statement(size: int) -> sql.Composed:
    """The DDL of the member index for groups of ``size``."""
    return sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON message_store.messages "
        "(message_store.category(stream_name), ({member}), global_position)"
    ).format(name=sql.Identifier(index_name(size)), member=sql.SQL(message_store.member_hash(size)))


def drop_statement(size: int) -> sql.Composed:
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS message_store.{name}").format(
        name=sql.Identifier(index_name(size))
    )


def check_size(size: int) -> int:
    """``size`` if a member index can be built for it, else ConfigurationError."""
    if size < 2:
        raise ConfigurationError(
            f"--member-index {size}: a member index is for consumer groups of 2 members or "
            "more (a plain group reads its categories with the message store's own index)"
        )
    if size > MAX_GROUP_SIZE:
        raise ConfigurationError(
            f"--member-index {size}: a consumer group has at most {MAX_GROUP_SIZE:,} members"
        )
    return size


def install(url: str, size: int) -> bool:
    """Build the member index for groups of ``size`` unless a valid one exists; True when it
    was built now. Takes a while on a large store (every row is hashed once)."""
    check_size(size)
    built = _build(url, _qualified(size), create_statement(size), drop_statement(size))
    if built:
        logger.info(
            "member index for groups of %d built",
            size,
            extra={"action": "member_index_built", "size": size, "index": index_name(size)},
        )
    return built


def bucket_index_name(buckets: int) -> str:
    """The name of the bucket index of elastic groups of ``buckets``, e.g.
    ``projector_bucket_64``."""
    return f"projector_bucket_{int(buckets)}"


def install_bucket_index(url: str, buckets: int) -> bool:
    """Build the index elastic members of groups of ``buckets`` read through: on (category,
    global_position, bucket), so that a read of a range of buckets scans in global order and
    checks the bucket in the index, fetching only its own rows (see
    `message_store.read_buckets`). True when it was built now."""
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ConfigurationError(
            f"--bucket-index {buckets}: an elastic group has 1 to {MAX_BUCKETS:,} buckets"
        )
    name = sql.Identifier(bucket_index_name(buckets))
    create = sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON message_store.messages "
        "(message_store.category(stream_name), global_position, ({bucket}))"
    ).format(name=name, bucket=sql.SQL(message_store.member_hash(buckets)))
    drop = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS message_store.{name}").format(name=name)
    built = _build(url, f"message_store.{bucket_index_name(buckets)}", create, drop)
    if built:
        logger.info(
            "bucket index for elastic groups of %d buckets built",
            buckets,
            extra={
                "action": "member_index_built",
                "size": buckets,
                "index": bucket_index_name(buckets),
            },
        )
    return built


def _build(url: str, qualified: str, create: sql.Composed, drop: sql.Composed) -> bool:
    with database.connect_sync(url) as conn:
        conn.autocommit = True  # CREATE INDEX CONCURRENTLY refuses to run in a transaction
        row = conn.execute(INDEX_STATE, {"index": qualified}).fetchone()
        if row is not None and row[0]:
            return False
        if row is not None:
            # An interrupted build leaves an invalid index that IF NOT EXISTS would keep.
            conn.execute(drop)
        conn.execute(create)
    return True


def drop(url: str, size: int) -> None:
    """Remove the member index for groups of ``size``, if there is one."""
    with database.connect_sync(url) as conn:
        conn.autocommit = True
        conn.execute(drop_statement(size))


async def installed(conn: Connection, size: int) -> bool:
    """Whether a valid member index for groups of ``size`` exists."""
    row = await (await conn.execute(INDEX_STATE, {"index": _qualified(size)})).fetchone()
    return bool(row and row[0])


async def report(pool: Pool, *, size: int, member: str) -> None:
    """Log whether a member of a group of ``size`` reads through its member index, and how to
    get one when it does not (actions ``member_index_used`` / ``member_index_missing``)."""
    async with database.pooled(pool, doing="looking for the member index") as conn:
        present = await installed(conn, size)
    fields = {"group": member, "size": size, "index": index_name(size)}
    if present:
        logger.info(
            "%s reads its own events through %s",
            member,
            index_name(size),
            extra={"action": "member_index_used", **fields},
        )
        return
    logger.info(
        "%s reads and hashes every event of its categories to find its own: "
        "`projector migrate --member-index %d` builds an index that makes its reads about "
        "%d times lighter",
        member,
        size,
        size,
        extra={"action": "member_index_missing", **fields},
    )


def _qualified(size: int) -> str:
    return f"message_store.{index_name(size)}"
