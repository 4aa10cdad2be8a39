"""A projection's versions: what each is called, the states it goes through, and whether the
version a handler runs in is replaying (`replaying`).

A version has a group of its own (``<name>`` for version 1, ``<name>_v<N>`` after it), so its
own checkpoints, stream positions and held streams; a projection with a ``setup`` hook also
has a schema of its own, ``<name>_v<N>``, where its transactional handlers write. Readers query
a stable schema named after the projection, whose views point at the live version's tables.

The states (stored in ``projector.projection_versions``)::

    rebuild start ──> building ──(cutover)──> live ──(another's cutover)──> previous
                         ▲                     │ ▲                            │
                         └─────(rollback)──────┘ └────────(rollback)──────────┘
    building, previous ──(retire)──> retired

A projection none of whose versions is recorded is treated as version 1, live, its tables in
``public``, its group its name: what every projection was before versions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime

from projector.errors import ConfigurationError
from projector.model.events import validate_group

MAX_SCHEMA_LENGTH = 63  # PostgreSQL's identifiers are cut at 63 bytes


class VersionState(enum.StrEnum):
    BUILDING = "building"  # projected beside the live version, not serving readers
    LIVE = "live"  # serving: the stable schema's views point at its tables
    PREVIOUS = "previous"  # was live, still projecting: what a rollback returns to
    RETIRED = "retired"  # stopped: its schema, checkpoints and positions dropped


def version_group(name: str, version: int) -> str:
    """The group a version projects under: the projection's name for version 1 (so a
    projection from before versions keeps its checkpoints), ``<name>_v<N>`` after it."""
    return name if version == 1 else validate_group(f"{name}_v{version}")


def version_schema(name: str, version: int) -> str:
    """The schema a version's tables live in (for a projection with a ``setup`` hook)."""
    schema = f"{name}_v{version}"
    check_schema_name(schema)
    return schema


def check_schema_name(schema: str) -> str:
    if len(schema.encode()) > MAX_SCHEMA_LENGTH:
        raise ConfigurationError(
            f"schema name {schema!r} is longer than PostgreSQL's {MAX_SCHEMA_LENGTH} bytes: "
            "give the projection a shorter name"
        )
    return schema


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a projection as recorded: its group, its schema (None: its tables, if
    any, are in ``public``, or it has none of projector's), its state and when it changed."""

    projection: str
    version: int
    group: str
    schema: str | None
    state: VersionState
    created_at: datetime
    live_since: datetime | None = None
    retired_at: datetime | None = None
    projecting_since: datetime | None = None  # when its first runner started

    @property
    def label(self) -> str:
        return f"version {self.version} of {self.projection}"


class Replaying:
    """What `replaying` answers in a run's handlers; the runner sets ``value`` as the
    version's state changes, and makes it current with `answering`."""

    __slots__ = ("value",)

    def __init__(self, value: bool = False) -> None:
        self.value = value


# The handlers' tasks inherit the run's context, so they all read the one holder the runner
# updates (a value set later in another task would not reach them).
_REPLAYING: ContextVar[Replaying | None] = ContextVar("projector_replaying", default=None)


def replaying() -> bool:
    """Whether the handler runs in a version being built beside the live one (a rebuild):
    side effects outside the read model (e-mails, calls to other services) are the live
    version's to make, so skip them while this is True. False once the version has gone
    live (and after, as the previous version, until it is retired), and outside a run.

    The runner reads the version's state as it starts and every few seconds after."""
    holder = _REPLAYING.get()
    return holder is not None and holder.value


@contextmanager
def answering(holder: Replaying) -> Iterator[None]:
    """Make `replaying` read ``holder`` in this context (and the tasks started in it)."""
    token = _REPLAYING.set(holder)
    try:
        yield
    finally:
        _REPLAYING.reset(token)
