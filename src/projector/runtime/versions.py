"""A projection's versions as a run meets them: setting a version up (its schema and tables),
pointing the readers' views at the live version, the check a runner makes before it projects
(`admit`), and keeping `projector.replaying` current while it runs (`VersionFollower`).

The statements are `projector.storage.versions`'; the state machine the operator drives
(start, cutover, rollback, retire) is `projector.admin.rebuild`'.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio

from projector.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    PrivilegeError,
    RebuildRefusedError,
)
from projector.model.projection import Projection
from projector.model.versions import Replaying, Version, VersionState
from projector.storage import checkpoints, database, versions
from projector.storage.database import Connection, Pool

logger = logging.getLogger(__name__)

REFRESH = 5.0  # seconds between a runner's reads of its version's state
VIEW_LOCK_TIMEOUT = 3.0  # seconds a view swap waits for a reader's lock before it gives up


async def set_up(conn: Connection, projection: Projection) -> None:
    """Create the version's schema and run its ``setup`` hook there, in the caller's
    transaction (a hook that fails leaves nothing behind)."""
    assert projection.schema is not None
    assert projection.setup is not None
    await versions.create_schema(conn, projection.schema)
    saved = await versions.current_search_path(conn)
    await versions.use_schema(conn, projection.schema)
    await projection.setup(conn)
    await versions.restore_search_path(conn, saved)


async def tables_of(conn: Connection, version: Version, other: Version | None) -> list[str]:
    """The tables readers see of ``version``: those of its schema; for a version 1 whose tables
    are in ``public`` (from before versions), the ones there named like a table of ``other``'s
    schema; none for a later version with no schema (its handlers write elsewhere)."""
    if version.schema is not None:
        return sorted(await versions.relations(conn, version.schema))
    if version.version > 1 or other is None or other.schema is None:
        return []
    public = await versions.relations(conn, "public")
    return sorted(name for name in await versions.relations(conn, other.schema) if name in public)


async def show(
    conn: Connection,
    live: Version,
    other: Version | None,
    *,
    lock_timeout: float = VIEW_LOCK_TIMEOUT,
) -> list[str]:
    """Point the stable schema's views at ``live``'s tables (see `tables_of`), creating the
    schema if need be, in the caller's transaction; the tables shown. Nothing, when neither
    version has a schema: their tables, if any, are not projector's to show."""
    if live.schema is None and (other is None or other.schema is None):
        return []
    await versions.ensure_stable_schema(conn, live.projection, live.projection)
    tables = await tables_of(conn, live, other)
    if not tables and await versions.relations(conn, live.projection):
        raise RebuildRefusedError(
            f"{live.label} has no tables in projector's database: switching to it would leave "
            f"readers of schema {live.projection} with none (give it a setup hook)"
        )
    await versions.point_views(
        conn, live.projection, live.schema or "public", tables, lock_timeout=lock_timeout
    )
    return tables


async def first_show(conn: Connection, live: Version, other: Version) -> list[str] | None:
    """`show`, if the stable schema does not exist yet (None when it does: it shows the live
    version already)."""
    if live.schema is None and other.schema is None:
        return None
    if not await versions.ensure_stable_schema(conn, live.projection, live.projection):
        return None
    return await show(conn, live, other)


async def admit(conn: Connection, projection: Projection, group: str) -> Version | None:
    """Check, as a runner starts, that its version may project, and set up the first version
    of a projection; the version as recorded (None: nothing is recorded, and nothing needs to
    be: a version 1 with no ``setup``, as every projection was before versions).

    A version must be recorded (by `projector rebuild start`) unless it is the first: version
    1, or any version of a projection that has never run (nothing recorded, and no checkpoint
    of its version 1's group). The first version of a projection with ``setup`` is set up
    here and goes live: its schema, its tables, the readers' views."""
    async with conn.transaction():
        if not await versions.may_read(conn):
            _refuse_unreadable(projection)
            return None
        await versions.lock_projection(conn, projection.name)
        recorded = await versions.versions(conn, projection.name)
        mine = next((v for v in recorded if v.version == projection.version), None)
        if mine is not None:
            return await _recorded(conn, mine, group)
        if recorded or not await _first(conn, projection):
            raise ConfigurationError(
                f"version {projection.version} of {projection.name} is not recorded: start "
                f"it with `projector rebuild start` (it is set up beside the live version, "
                "which keeps serving), then run it"
            )
        if projection.setup is None and projection.version == 1:
            return None
        return await _first_goes_live(conn, projection, group)


def _refuse_unreadable(projection: Projection) -> None:
    """A role that may not read the versions runs what needs none: a version 1 with no setup
    hook (as every projection was before versions)."""
    if projection.version == 1 and projection.setup is None:
        return
    raise PrivilegeError(
        f"version {projection.version} of {projection.name} needs its runner to read "
        "projector.projection_versions: grant the role SELECT and UPDATE on it (see the docs' "
        "'Privileges and connections')"
    )


async def _recorded(conn: Connection, version: Version, group: str) -> Version:
    if version.state is VersionState.RETIRED:
        raise ConfigurationError(
            f"{version.label} is retired: run a later version (`projector rebuild status "
            f"--projection {version.projection}` lists them)"
        )
    if version.group != group:
        raise ConfigurationError(
            f"{version.label} projects under group {version.group}, not {group}: run it "
            f"without --group (or with --group {version.group})"
        )
    if version.state is VersionState.BUILDING and version.projecting_since is None:
        await versions.mark_projecting(conn, group)
    return version


async def _first(conn: Connection, projection: Projection) -> bool:
    if projection.version == 1:
        return True
    return not await checkpoints.rows(conn, projection.name)


async def _first_goes_live(conn: Connection, projection: Projection, group: str) -> Version:
    if projection.setup is not None:
        await set_up(conn, projection)
    now = datetime.now(UTC)
    version = Version(
        projection.name, projection.version, group, projection.schema, VersionState.LIVE, now
    )
    await versions.record(conn, version)
    tables = await show(conn, version, None)
    logger.info(
        "%s is set up and live (%d table(s) in schema %s, read through schema %s)",
        version.label,
        len(tables),
        version.schema or "public",
        projection.name,
        extra={
            "action": "version_live",
            "projection": projection.name,
            "version": projection.version,
            "group": group,
            "schema": version.schema,
        },
    )
    return version


class VersionFollower:
    """Reads a version's state every REFRESH seconds, and sets ``holder`` (what
    `projector.replaying` answers) to whether it is building."""

    def __init__(self, pool: Pool, group: str, holder: Replaying) -> None:
        self._pool = pool
        self._group = group
        self._holder = holder

    async def run(self) -> None:
        """Refresh until cancelled; a reading the database does not answer is skipped. A role
        that may not read the versions runs a version 1 from before versions: nothing to do."""
        readable: bool | None = None  # asked once
        while True:
            await anyio.sleep(REFRESH)
            try:
                async with database.pooled(self._pool, doing="reading the version") as conn:
                    if readable is None:
                        readable = await versions.may_read(conn)
                    if not readable:
                        return
                    version = await versions.of_group(conn, self._group)
            except DatabaseUnavailableError as exc:
                logger.debug(
                    "version state not read: %s", exc, extra={"action": "version_unread"}
                )
                continue
            self._update(version)

    def _update(self, version: Version | None) -> None:
        building = version is not None and version.state is VersionState.BUILDING
        if building == self._holder.value:
            return
        self._holder.value = building
        state = "unrecorded" if version is None else version.state.value
        logger.info(
            "group %s's version is now %s: its handlers %s replaying",
            self._group,
            state,
            "are" if building else "are no longer",
            extra={"action": "version_state_changed", "group": self._group, "state": state},
        )
