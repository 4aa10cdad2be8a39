"""``projector rebuild``: a projection's versions driven through their states (see
`projector.model.versions`): start a version beside the live one, cut readers over to it once
it has caught up and verifies, roll back, retire an old version.

Every change is one transaction under the projection's lock (`storage.versions.lock_projection`),
so two commands never interleave. The readers' views change in that transaction too (see
`storage.versions.point_views`): a reader sees the old version's table or the new one's,
never an error, an empty table or a half-built one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio

from projector.admin import groups
from projector.admin.rebuild_status import VersionStatus, in_state, pick_version, status_of
from projector.admin.verify import Verification, verify
from projector.errors import ConfigurationError, RebuildRefusedError, ViewsBusyError
from projector.model.events import validate_group
from projector.model.projection import Projection
from projector.model.versions import Version, VersionState
from projector.runtime import versions as running_versions
from projector.storage import checkpoints, versions
from projector.storage.database import Connection

WAIT_POLL = 1.0  # seconds between lag readings while a cutover waits
SWAP_RETRY = 0.5  # seconds before a swap that met a busy reader is made again


@dataclass(frozen=True, slots=True)
class Started:
    """A version set up to be built: ``live`` is the version serving (``recorded``: just
    recorded, as the version 1 every projection had); ``shown`` the tables readers now find
    in the stable schema, when this start created it (None: it was there, or is not needed)."""

    version: Version
    live: Version
    recorded: bool
    shown: list[str] | None


@dataclass(frozen=True, slots=True)
class Switched:
    """A cutover or a rollback: ``live`` serves now, ``left`` is what it replaced (now
    ``previous``, or ``building`` after a rollback); ``tables`` readers find; ``status`` of
    the new live version as it was switched to."""

    live: Version
    left: Version
    tables: list[str]
    status: VersionStatus
    verification: Verification | None = None


@dataclass(frozen=True, slots=True)
class Retired:
    version: Version
    checkpoints: int
    schema_dropped: bool


async def start(conn: Connection, projection: Projection) -> Started:
    """Record ``projection``'s version as building, create its schema and tables (``setup``),
    and, the first time, the stable schema of views over the live version."""
    name = projection.name
    if projection.is_transactional and projection.setup is None:
        raise ConfigurationError(
            f"projection {name!r} is transactional but has no setup hook: give "
            "Projection(..., setup=...) an async function (conn) that creates its tables "
            "(unqualified names), so that the new version writes its own schema and not the "
            "live version's tables"
        )
    async with conn.transaction():
        await versions.lock_projection(conn, name)
        recorded = await versions.versions(conn, name)
        _refuse_recorded(projection, recorded)
        live, implied = await _live_or_first(conn, projection, recorded)
        if await versions.group_used(conn, projection.group):
            raise ConfigurationError(
                f"group {projection.group} has checkpoints or stream positions already (from "
                f"runs under --group {projection.group}?): the new version would skip what "
                "they say was handled; give the projection another version number"
            )
        if projection.setup is not None:
            await running_versions.set_up(conn, projection)
        new = Version(
            name,
            projection.version,
            projection.group,
            projection.schema,
            VersionState.BUILDING,
            datetime.now(UTC),
        )
        await versions.record(conn, new)
        shown = None
        if new.schema is not None:
            shown = await running_versions.first_show(conn, live, new)
    return Started(new, live, implied, shown)


def _refuse_recorded(projection: Projection, recorded: list[Version]) -> None:
    for version in recorded:
        if version.version == projection.version:
            raise ConfigurationError(
                f"{version.label} is recorded already ({version.state.value}): run it with "
                f"`projector run`; `projector rebuild status --projection {projection.name}` "
                "shows where it is"
            )
    newest = max((version.version for version in recorded), default=1)
    if projection.version < newest:
        raise ConfigurationError(
            f"version {projection.version} of {projection.name} is older than version "
            f"{newest}, recorded already: versions only go up"
        )


async def _live_or_first(
    conn: Connection, projection: Projection, recorded: list[Version]
) -> tuple[Version, bool]:
    """The live version; with none recorded, version 1 (in ``public``, under the projection's
    name), recorded now."""
    live = in_state(recorded, VersionState.LIVE)
    if live is not None:
        return live, False
    if recorded:
        raise RebuildRefusedError(
            f"projection {projection.name} has no live version: cut one over first"
        )
    if projection.version == 1:
        raise ConfigurationError(
            f"version 1 is the first version of {projection.name}: `projector run` sets it "
            "up; to rebuild it, give the projection version=2"
        )
    if not await checkpoints.rows(conn, projection.name):
        raise ConfigurationError(
            f"projection {projection.name} has never run, so there is nothing to rebuild: "
            f"`projector run` sets version {projection.version} up as its first version"
        )
    first = Version(
        projection.name, 1, projection.name, None, VersionState.LIVE, datetime.now(UTC)
    )
    await versions.record(conn, first)
    return first, True


async def cutover(
    conn: Connection,
    name: str,
    *,
    version: int | None = None,
    max_lag: int,
    within: float,
    force: bool = False,
    query: str | None = None,
    query_live: str | None = None,
    query_new: str | None = None,
) -> Switched:
    """Wait (up to ``within`` s) until the building version lags at most ``max_lag`` events;
    refuse while it lags more, has failing streams, has a member with no runner, or fails
    `verify`, unless ``force``; then point the views at it and make it live (the live version
    becomes previous)."""
    target, live = await _cutover_pair(conn, validate_group(name), version)
    ready = await _wait_until_ready(conn, target, max_lag=max_lag, within=within, force=force)
    verification = None
    if not force:
        verification = await verify(
            conn,
            name,
            version=target.version,
            query=query,
            query_live=query_live,
            query_new=query_new,
        )
        if not verification.matches:
            raise RebuildRefusedError(
                f"{target.label} does not verify against {live.label}: "
                f"{verification.first_difference()} (`projector rebuild verify` shows all; "
                "--force cuts over anyway)"
            )
    tables = await _swap(conn, name, target, live, within=within, cutting_over=True)
    return Switched(
        _as(target, VersionState.LIVE),
        _as(live, VersionState.PREVIOUS),
        tables,
        ready,
        verification,
    )


async def _cutover_pair(
    conn: Connection, name: str, version: int | None
) -> tuple[Version, Version]:
    async with conn.transaction():
        recorded = await versions.versions(conn, name)
    target = pick_version(name, recorded, version, default=VersionState.BUILDING)
    if target.state is not VersionState.BUILDING:
        raise RebuildRefusedError(f"{target.label} is {target.state.value}, not building")
    live = in_state(recorded, VersionState.LIVE)
    if live is None:
        raise RebuildRefusedError(f"projection {name} has no live version to cut over from")
    previous = in_state(recorded, VersionState.PREVIOUS)
    if previous is not None:
        raise RebuildRefusedError(
            f"{previous.label} is still the previous version: retire it first "
            f"(`projector rebuild retire --projection {name} --version {previous.version}`)"
        )
    return target, live


async def _wait_until_ready(
    conn: Connection, target: Version, *, max_lag: int, within: float, force: bool
) -> VersionStatus:
    """The version's status once it lags at most ``max_lag`` events (at once with
    ``force``); refused once ``within`` seconds have passed with it behind."""
    deadline = anyio.current_time() + within
    while True:
        async with conn.transaction():
            current = await status_of(conn, target)
        reason = current.not_ready(max_lag)
        if reason is None or force:
            return current
        if anyio.current_time() >= deadline:
            raise RebuildRefusedError(
                f"{target.label} is not ready after {within:g} s: {reason} (--timeout waits "
                "longer, --force cuts over anyway)"
            )
        await anyio.sleep(WAIT_POLL)


async def _swap(
    conn: Connection,
    name: str,
    target: Version,
    current: Version,
    *,
    within: float,
    cutting_over: bool,
) -> list[str]:
    """In one transaction: the views to ``target``'s tables, ``target`` live, ``current``
    previous (a cutover) or building (a rollback). A swap that met a reader holding a view
    too long changed nothing, and is made again for up to ``within`` seconds."""
    deadline = anyio.current_time() + within
    while True:
        try:
            async with conn.transaction():
                await versions.lock_projection(conn, name)
                await _still(conn, name, target, current)
                tables = await running_versions.show(conn, target, current)
                left = VersionState.PREVIOUS if cutting_over else VersionState.BUILDING
                await versions.set_state(conn, name, current.version, left)
                await versions.set_state(conn, name, target.version, VersionState.LIVE)
            return tables
        except ViewsBusyError:
            if anyio.current_time() >= deadline:
                raise
            await anyio.sleep(SWAP_RETRY)


async def _still(conn: Connection, name: str, target: Version, current: Version) -> None:
    """Refuse if the states changed since they were read (another command ran meanwhile)."""
    recorded = {v.version: v.state for v in await versions.versions(conn, name)}
    if recorded.get(target.version) is not target.state or (
        recorded.get(current.version) is not VersionState.LIVE
    ):
        raise RebuildRefusedError(
            f"the versions of {name} changed while this command ran: look at "
            f"`projector rebuild status --projection {name}` and try again"
        )


async def rollback(conn: Connection, name: str, *, within: float) -> Switched:
    """Point the views back at the previous version and make it live again; the live one
    becomes building (it keeps projecting, and can be cut over to again)."""
    async with conn.transaction():
        recorded = await versions.versions(conn, validate_group(name))
    live = in_state(recorded, VersionState.LIVE)
    previous = in_state(recorded, VersionState.PREVIOUS)
    if live is None or previous is None:
        raise RebuildRefusedError(
            f"projection {name} has no previous version to roll back to (a cutover leaves one)"
        )
    tables = await _swap(conn, name, previous, live, within=within, cutting_over=False)
    async with conn.transaction():
        now_live = await status_of(conn, _as(previous, VersionState.LIVE))
    return Switched(
        _as(previous, VersionState.LIVE), _as(live, VersionState.BUILDING), tables, now_live
    )


async def retire(conn: Connection, name: str, version: int) -> Retired:
    """Stop a version for good: its checkpoints, stream positions and held streams deleted
    (refused while a runner of it is up), its schema dropped (a version in ``public`` keeps
    its tables), its state retired."""
    async with conn.transaction():
        await versions.lock_projection(conn, validate_group(name))
        recorded = await versions.versions(conn, name)
        found = next((v for v in recorded if v.version == version), None)
        if found is None:
            raise ConfigurationError(
                f"projection {name} has no version {version} (`projector rebuild status "
                f"--projection {name}` lists them)"
            )
        if found.state is VersionState.LIVE:
            raise RebuildRefusedError(
                f"{found.label} is live: readers use it; cut over to another version (or "
                "roll back) first"
            )
        if found.state is VersionState.RETIRED:
            raise RebuildRefusedError(f"{found.label} is retired already")
        deleted = await groups.reset_group(conn, found.group)  # refuses while members run
        await versions.forget_group(conn, found.group)
        if found.schema is not None:
            await versions.drop_schema(conn, found.schema)
        await versions.set_state(conn, name, version, VersionState.RETIRED)
    return Retired(_as(found, VersionState.RETIRED), len(deleted), found.schema is not None)


def _as(version: Version, state: VersionState) -> Version:
    return dataclasses.replace(version, state=state)
