"""``projector.projection_versions`` and the schemas of a projection's versions: the rows and
their states, each version's schema, the stable schema of views readers query, and the
statements that put a version's schema first on a transaction's ``search_path``.

Identifiers (schemas, tables, roles) are composed with `psycopg.sql`, never formatted in. A
version's schema goes on the ``search_path`` only with ``SET LOCAL``, inside a transaction:
Message DB's functions resolve unqualified names through the session's path, so a pool
connection must never be left with a version's schema on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from projector.errors import ConfigurationError, ViewsBusyError
from projector.model.events import hash_64
from projector.model.versions import Version, VersionState
from projector.storage import database
from projector.storage.database import Connection

COLUMNS = """projection, version, group_name, schema_name, state, created_at, live_since,
    retired_at, projecting_since"""

OF_PROJECTION = f"""
SELECT {COLUMNS} FROM projector.projection_versions
WHERE %(projection)s::text IS NULL OR projection = %(projection)s
ORDER BY projection, version
"""

OF_GROUP = f"SELECT {COLUMNS} FROM projector.projection_versions WHERE group_name = %(group)s"

RECORD = """
INSERT INTO projector.projection_versions (projection, version, group_name, schema_name, state,
    live_since)
VALUES (%(projection)s, %(version)s, %(group)s, %(schema)s, %(state)s,
    CASE WHEN %(state)s = 'live' THEN now() END)
"""

SET_STATE = """
UPDATE projector.projection_versions
SET state = %(state)s,
    live_since = CASE WHEN %(state)s = 'live' THEN now() ELSE live_since END,
    retired_at = CASE WHEN %(state)s = 'retired' THEN now() END
WHERE projection = %(projection)s AND version = %(version)s
"""

MARK_PROJECTING = """
UPDATE projector.projection_versions SET projecting_since = now()
WHERE group_name = %(group)s AND projecting_since IS NULL
"""

# A runner of a version 1 without a setup hook (every projection from before versions) runs
# without the right to read the versions: a role granted only what runners needed before.
MAY_READ = "SELECT has_table_privilege('projector.projection_versions', 'SELECT')"

# Every change of a projection's versions holds this for its transaction: two commands (or a
# command and a first run setting the projection up) never interleave.
LOCK_PROJECTION = "SELECT pg_advisory_xact_lock(%(key)s)"

SCHEMA_COMMENT = """
SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = %(schema)s
"""

# A schema's relations that readers could query (partitions are reached through their parent).
RELATIONS = """
SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
ORDER BY c.relname
"""

# Who may do what on a view, besides its owner (PUBLIC has no role: NULL).
GRANTS = """
SELECT r.rolname, a.privilege_type, a.is_grantable
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.oid = %(view)s::regclass AND a.grantee <> c.relowner
"""

PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)

# Whether a group has projected anything: a new version's group must not (it would skip
# what its checkpoints and positions say it has handled).
GROUP_USED = """
SELECT EXISTS (SELECT FROM projector.checkpoints WHERE group_name = %(group)s)
    OR EXISTS (SELECT FROM projector.stream_positions WHERE group_name = %(group)s)
    OR EXISTS (SELECT FROM projector.held_streams WHERE group_name = %(group)s)
"""

FORGET_POSITIONS = "DELETE FROM projector.stream_positions WHERE group_name = %(group)s"
FORGET_HELD = "DELETE FROM projector.held_streams WHERE group_name = %(group)s"
FORGET_ELASTIC = "DELETE FROM projector.elastic_groups WHERE group_name = %(group)s"

# The schema projector creates for readers says so, so that a schema of the user's own that
# happens to bear a projection's name is never taken for it.
STABLE_COMMENT = "projector: the views readers query, over the live version of projection {}"

SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
CURRENT_SEARCH_PATH = "SELECT current_setting('search_path')"
RESTORE_SEARCH_PATH = "SELECT set_config('search_path', %(path)s, true)"
LOCK_TIMEOUT = "SELECT set_config('lock_timeout', %(timeout)s, true)"


def search_path(schema: str | None) -> sql.Composed:
    """``SET LOCAL search_path``: the version's schema first (``public`` for None), then
    Message DB's schema, then ``public``."""
    first = sql.Identifier(schema or "public")
    return sql.SQL("SET LOCAL search_path TO {}, message_store, public").format(first)


def begin_statement(schema: str | None) -> bytes:
    """What a transactional session sends to begin a transaction: with a version's schema,
    BEGIN then ``SET LOCAL search_path`` (a SET takes no snapshot: the transaction stays as
    fresh as a bare BEGIN leaves it)."""
    if schema is None:
        return b"BEGIN"
    return b"BEGIN; " + search_path(schema).as_string(None).encode()


def _version(row: tuple[object, ...]) -> Version:
    values = list(row)
    values[4] = VersionState(str(values[4]))
    return Version(*values)  # type: ignore[arg-type]


async def versions(conn: Connection, projection: str | None = None) -> list[Version]:
    """Every recorded version (of ``projection`` only, if given), in version order."""
    cursor = await conn.execute(OF_PROJECTION, {"projection": projection})
    return [_version(row) for row in await cursor.fetchall()]


async def may_read(conn: Connection) -> bool:
    """Whether this role may read the versions (see MAY_READ)."""
    row = await (await conn.execute(MAY_READ)).fetchone()
    return row is not None and bool(row[0])


async def of_group(conn: Connection, group: str) -> Version | None:
    """The version a group projects, if one is recorded."""
    row = await (await conn.execute(OF_GROUP, {"group": group})).fetchone()
    return None if row is None else _version(row)


async def lock_projection(conn: Connection, projection: str) -> None:
    """Serialise every change of the projection's versions, for the transaction."""
    await conn.execute(LOCK_PROJECTION, {"key": hash_64(f"projector/versions/{projection}")})


async def record(conn: Connection, version: Version) -> None:
    params = {
        "projection": version.projection,
        "version": version.version,
        "group": version.group,
        "schema": version.schema,
        "state": version.state.value,
    }
    await conn.execute(RECORD, params)


async def set_state(conn: Connection, projection: str, version: int, state: VersionState) -> None:
    params = {"projection": projection, "version": version, "state": state.value}
    await conn.execute(SET_STATE, params)


async def mark_projecting(conn: Connection, group: str) -> None:
    """Note when a building version's first runner started (its catch-up estimate's origin)."""
    await conn.execute(MARK_PROJECTING, {"group": group})


async def create_schema(conn: Connection, schema: str) -> None:
    try:
        async with conn.transaction():
            await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    except Exception as exc:
        if database.refusal(exc, psycopg.errors.DuplicateSchema) is None:
            raise
        raise ConfigurationError(
            f"schema {schema} exists already, but no version of the projection records it: "
            f"drop it (DROP SCHEMA {schema} CASCADE) if it is a leftover, or rename it"
        ) from None


async def drop_schema(conn: Connection, schema: str) -> None:
    """Drop a version's schema and everything in it (and what depends on it elsewhere)."""
    await conn.execute(
        sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    )


async def use_schema(conn: Connection, schema: str | None) -> None:
    """Put ``schema`` first on the ``search_path`` for the rest of the transaction."""
    await conn.execute(search_path(schema))


async def current_search_path(conn: Connection) -> str:
    row = await (await conn.execute(CURRENT_SEARCH_PATH)).fetchone()
    assert row is not None
    return str(row[0])


async def restore_search_path(conn: Connection, path: str) -> None:
    """Put back, for the rest of the transaction, a path `current_search_path` read."""
    await conn.execute(RESTORE_SEARCH_PATH, {"path": path})


async def relations(conn: Connection, schema: str) -> dict[str, str]:
    """The tables, views and materialised views of a schema: name -> relkind."""
    rows = await (await conn.execute(RELATIONS, {"schema": schema})).fetchall()
    return {str(name): str(kind) for name, kind in rows}


async def ensure_stable_schema(conn: Connection, stable: str, projection: str) -> bool:
    """Create the schema of views readers query, unless it is there (and projector's);
    whether it was created now."""
    comment = STABLE_COMMENT.format(projection)
    row = await (await conn.execute(SCHEMA_COMMENT, {"schema": stable})).fetchone()
    if row is not None:
        if row[0] != comment:
            raise ConfigurationError(
                f"schema {stable} exists and is not projector's: the views of projection "
                f"{projection} would go there; rename that schema, or the projection"
            )
        return False
    identifier = sql.Identifier(stable)
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(identifier))
    await conn.execute(
        sql.SQL("COMMENT ON SCHEMA {} IS {}").format(identifier, sql.Literal(comment))
    )
    return True


@dataclass(frozen=True, slots=True)
class Grant:
    role: str | None  # None: PUBLIC
    privilege: str
    grantable: bool


async def point_views(
    conn: Connection, stable: str, source: str, tables: list[str], *, lock_timeout: float
) -> None:
    """Make the stable schema's views exactly one per table of ``tables``, each ``SELECT *``
    from the table of that name in ``source``, keeping every grant the old view of a name had.

    In the caller's transaction: DROP VIEW and CREATE VIEW take the old view's lock, so a
    reader's query on it waits for the commit and then resolves the name again, to the new
    view; none sees the name missing. Waiting for a lock is bounded by ``lock_timeout`` (a
    long reader holding a view would otherwise queue every other reader behind the DROP)."""
    await conn.execute(LOCK_TIMEOUT, {"timeout": f"{round(lock_timeout * 1000)}ms"})
    try:
        await _point_views(conn, stable, source, tables)
    except Exception as exc:
        if database.refusal(exc, psycopg.errors.LockNotAvailable) is None:
            raise
        raise ViewsBusyError(
            f"a reader held a view of schema {stable} for longer than {lock_timeout:g} s: "
            "the views were left as they were"
        ) from exc


async def _point_views(conn: Connection, stable: str, source: str, tables: list[str]) -> None:
    present = await relations(conn, stable)
    foreign = sorted(name for name, kind in present.items() if kind != "v")
    if foreign:
        raise ConfigurationError(
            f"schema {stable} holds {', '.join(foreign)}, which are not views: projector keeps "
            "only views there; move them elsewhere"
        )
    for name in present:
        grants = await _grants(conn, stable, name)
        await conn.execute(
            sql.SQL("DROP VIEW {}.{}").format(sql.Identifier(stable), sql.Identifier(name))
        )
        if name in tables:
            await _create_view(conn, stable, source, name, grants)
    for name in tables:
        if name not in present:
            await _create_view(conn, stable, source, name, [])


async def _grants(conn: Connection, schema: str, view: str) -> list[Grant]:
    qualified = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(view))
    cursor = await conn.execute(GRANTS, {"view": qualified.as_string(conn)})
    return [Grant(role, str(privilege), bool(grantable)) for role, privilege, grantable in
            await cursor.fetchall()]


async def _create_view(
    conn: Connection, stable: str, source: str, name: str, grants: list[Grant]
) -> None:
    view = sql.SQL("{}.{}").format(sql.Identifier(stable), sql.Identifier(name))
    table = sql.SQL("{}.{}").format(sql.Identifier(source), sql.Identifier(name))
    await conn.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(view, table))
    for grant in grants:
        if grant.privilege not in PRIVILEGES:
            continue
        grantee = sql.SQL("PUBLIC") if grant.role is None else sql.Identifier(grant.role)
        option = sql.SQL(" WITH GRANT OPTION") if grant.grantable else sql.SQL("")
        await conn.execute(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(grant.privilege), view, grantee, option
            )
        )


async def row_count(conn: Connection, schema: str, table: str) -> int:
    statement = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    row = await (await conn.execute(statement)).fetchone()
    assert row is not None
    return int(row[0])


async def one_snapshot(conn: Connection) -> None:
    """Make the transaction just begun read-only, every statement seeing one snapshot."""
    await conn.execute(SNAPSHOT)


async def user_query(conn: Connection, query: str) -> list[tuple[object, ...]]:
    """Run a query an operator gave, in the caller's (read-only) transaction, in a savepoint:
    a query that fails says so, and leaves the transaction usable. The connection is lent to
    the query: what it refuses is the operator's to fix, whatever projector would call it (a
    lost connection is DatabaseUnavailableError still)."""
    try:
        with database.lent(conn):
            async with conn.transaction():
                cursor = await conn.execute(query.encode())
                return list(await cursor.fetchall()) if cursor.description is not None else []
    except psycopg.Error as exc:
        raise ConfigurationError(
            f"the query failed: {database.first_line(exc)} (query: {query!r})"
        ) from exc


async def group_used(conn: Connection, group: str) -> bool:
    """Whether the group has checkpoints, stream positions or held streams."""
    row = await (await conn.execute(GROUP_USED, {"group": group})).fetchone()
    return row is not None and bool(row[0])


async def forget_group(conn: Connection, group: str) -> None:
    """Delete a group's stream positions, held streams and elastic registration (its
    checkpoints are `projector.admin.groups`' to delete, under the members' locks)."""
    for statement in (FORGET_POSITIONS, FORGET_HELD, FORGET_ELASTIC):
        await conn.execute(statement, {"group": group})
