"""``projector rebuild status``: each version of a projection with its state, and how far its
group is behind (the lag `projector status` measures), with, for a building version, an
estimate of when it catches up; and which version a command means (`pick_version`).

Everything comes from the database, so it works with no runner up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from projector.admin import status
from projector.admin.status import MemberStatus
from projector.errors import ConfigurationError, RebuildRefusedError
from projector.model.events import FIRST_POSITION, validate_group
from projector.model.versions import Version, VersionState
from projector.storage import versions
from projector.storage.database import Connection


@dataclass(frozen=True, slots=True)
class VersionStatus:
    """One version: ``lag_events`` (None: its group has no checkpoint, it never ran) summed
    over its members and categories, ``lag_seconds`` the oldest unhandled event's age,
    ``running`` whether every member has a runner up, ``retrying`` and ``parked`` its failing
    streams, ``eta_seconds`` the estimated time to catch up (None: unknown), from its progress
    since its first runner started. ``recorded`` is False for the version 1 a projection with
    no recorded version has."""

    version: Version
    recorded: bool
    lag_events: int | None
    lag_seconds: float | None
    running: bool
    members: int
    retrying: int
    parked: int
    eta_seconds: float | None

    def not_ready(self, max_lag: int) -> str | None:
        """Why it cannot serve readers yet, lagging at most ``max_lag`` events; None: it can."""
        group = self.version.group
        if self.lag_events is None:
            return f"group {group} has no checkpoint: start `projector run` for it"
        if not self.running:
            return f"a member of group {group} has no runner up: it would fall behind once live"
        if self.retrying or self.parked:
            return (
                f"{self.retrying + self.parked} of its streams are failing (`projector failing "
                f"list --group {group}`)"
            )
        if self.lag_events > max_lag:
            return f"it lags {self.lag_events} events, more than {max_lag}"
        return None


async def collect(conn: Connection, projection: str | None = None) -> list[VersionStatus]:
    """Every version (of ``projection`` only, if given), in one transaction; a projection
    given with none recorded shows its version 1."""
    if projection is not None:
        validate_group(projection)
    async with conn.transaction():
        recorded = await versions.versions(conn, projection)
        if projection is not None and not recorded:
            first = Version(
                projection, 1, projection, None, VersionState.LIVE, datetime.now(UTC)
            )
            return [await status_of(conn, first, recorded=False)]
        return [await status_of(conn, version) for version in recorded]


async def status_of(conn: Connection, version: Version, *, recorded: bool = True) -> VersionStatus:
    """One version's status (nothing is measured of a retired one: its group is gone)."""
    if version.state is VersionState.RETIRED:
        return VersionStatus(version, recorded, None, None, False, 0, 0, 0, None)
    rows = await status.collect(conn, version.group)
    if not rows:
        return VersionStatus(version, recorded, None, None, False, 0, 0, 0, None)
    lags = [row.lag_seconds for row in rows if row.lag_seconds is not None]
    return VersionStatus(
        version,
        recorded,
        sum(row.lag_events for row in rows),
        max(lags, default=None),
        all(row.running for row in rows),
        len({row.member for row in rows}),
        sum(row.retrying for row in rows),
        sum(row.parked for row in rows),
        _eta(rows, version.projecting_since),
    )


def _eta(rows: list[MemberStatus], since: datetime | None) -> float | None:
    """Seconds until the slowest member catches up, at the pace (in global positions) it has
    kept since ``since``; events written meanwhile are not counted (few, beside a catch-up's
    pace). 0 when caught up; None when there is no pace to go by."""
    if all(row.lag_events == 0 for row in rows):
        return 0.0
    if since is None:
        return None
    elapsed = (datetime.now(UTC) - since).total_seconds()
    worst = 0.0
    for row in rows:
        if row.lag_events == 0 or row.head is None:
            continue
        pace = (row.checkpoint - FIRST_POSITION) / elapsed if elapsed > 0 else 0.0
        if pace <= 0:
            return None
        worst = max(worst, (row.head + 1 - row.checkpoint) / pace)
    return worst


def pick_version(
    name: str, recorded: list[Version], version: int | None, *, default: VersionState
) -> Version:
    """Version ``version`` of the projection, or (None) its newest in state ``default``."""
    if not recorded:
        raise ConfigurationError(
            f"projection {name} has no recorded versions (`projector rebuild start` records "
            "a new one)"
        )
    if version is None:
        found = [v for v in recorded if v.state is default]
        if not found:
            raise RebuildRefusedError(
                f"projection {name} has no {default.value} version (`projector rebuild status "
                f"--projection {name}` shows its versions)"
            )
        return found[-1]
    picked = next((v for v in recorded if v.version == version), None)
    if picked is None:
        raise ConfigurationError(
            f"projection {name} has no version {version} (recorded: "
            f"{', '.join(str(v.version) for v in recorded)})"
        )
    return picked


def in_state(recorded: list[Version], state: VersionState) -> Version | None:
    return next((v for v in recorded if v.state is state), None)


def to_json(rows: list[VersionStatus]) -> str:
    """JSON Lines, one object per version (see the docs, Rebuilding a projection)."""
    return "".join(json.dumps(_json_row(row)) + "\n" for row in rows)


def _json_row(row: VersionStatus) -> dict[str, object]:
    version = row.version
    return {
        "projection": version.projection,
        "version": version.version,
        "state": version.state.value,
        "recorded": row.recorded,
        "group": version.group,
        "schema": version.schema,
        "lag_events": row.lag_events,
        "lag_seconds": row.lag_seconds,
        "running": row.running,
        "members": row.members,
        "retrying": row.retrying,
        "parked": row.parked,
        "eta_seconds": None if row.eta_seconds is None else round(row.eta_seconds, 1),
        "created_at": _iso(version.created_at) if row.recorded else None,
        "live_since": _iso(version.live_since),
        "retired_at": _iso(version.retired_at),
        "projecting_since": _iso(version.projecting_since),
    }


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
