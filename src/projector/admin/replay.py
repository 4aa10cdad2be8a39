"""``projector replay``: one stream's events applied or delivered again, for one group.

A transactional projection's stream is replayed here and now, in one transaction with the
runner fenced out (`projector.runtime.replay`). An at-least-once projection's stream is
delivered again by the runner that owns it: the stream is held from its first event with its
replay due now (`projector.storage.held`), and that runner takes it out of its read path once
no call of it runs, replays it from the stream itself, and lets it rejoin (see
`projector.runtime.replays`); with no runner up, the group's next run does it as it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from projector.admin.failing import runner_up
from projector.errors import ConfigurationError
from projector.model.events import category, validate_group
from projector.model.projection import Projection
from projector.model.versions import VersionState
from projector.runtime.replay import replay_stream
from projector.storage import held, message_store, versions
from projector.storage.database import Connection

REASON = "an operator asked for the stream to be delivered again (projector replay)"


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay did: ``applied`` events applied again now (a transactional projection),
    or None when the stream's runner delivers them (``runner_up``: one runs now)."""

    group: str
    stream_name: str
    applied: int | None
    runner_up: bool = False


async def replay(
    conn: Connection, projection: Projection, stream_name: str, *, group: str | None = None
) -> Replay:
    """Replay ``stream_name`` for ``group`` (default: the projection's version's group)."""
    group = validate_group(group or projection.group)
    if projection.categories and category(stream_name) not in projection.categories:
        raise ConfigurationError(
            f"stream {stream_name!r} is not in a category of projection {projection.name!r} "
            f"({', '.join(projection.categories)})"
        )
    async with conn.transaction():
        await _check_version(conn, projection, group)
    if projection.is_transactional:
        applied = await replay_stream(conn, projection, group, stream_name)
        return Replay(group, stream_name, applied)
    async with conn.transaction():
        first = await message_store.read_stream(conn, stream_name, 0, 1)
        if not first:
            raise ConfigurationError(f"stream {stream_name!r} has no events: nothing to replay")
        await held.request_replay(conn, group, first[0], reason=REASON)
        up = await runner_up(conn, group)
    return Replay(group, stream_name, None, up)


async def _check_version(conn: Connection, projection: Projection, group: str) -> None:
    """The code must be the group's version's: its handler and its schema are used."""
    recorded = await versions.of_group(conn, group)
    if recorded is None:
        return
    if recorded.projection != projection.name or recorded.version != projection.version:
        raise ConfigurationError(
            f"group {group} projects {recorded.label}, but the code given is version "
            f"{projection.version} of {projection.name}: replay with that version's code, or "
            f"in group {projection.group}"
        )
    if recorded.state is VersionState.RETIRED:
        raise ConfigurationError(f"{recorded.label} is retired: nothing projects it any more")
