"""Running projections in a test: in-process, with the real pipeline and checkpoints, until
every event written so far is handled (`run_until_caught_up`); a crash before a checkpoint
commit (`run_with_crash`); or one handler alone, with no pipeline (`call_handler`).

A run takes its settings from its arguments alone, never from ``PROJECTOR_`` variables or a
``.env`` file, so a test does the same on every machine; its intervals and retry delays are
short (`FAST`), so that failing streams are retried and parked within a second.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from projector.errors import ConfigurationError
from projector.model.events import Event
from projector.model.projection import Projection
from projector.runner import Runner
from projector.settings import Settings
from projector.storage import checkpoints
from projector.storage.database import Connection
from projector.testing.database import Database, as_database
from projector.testing.events import placed, spans

FAST: dict[str, Any] = {
    "tail_sleep": 0.02,  # only live upstreams of a dependent projection ever sleep
    "checkpoint_interval": 0.05,
    "retry_base": 0.01,
    "retry_cap": 0.05,
    "require_events": False,  # a test may run a projection before its first event
    "progress": False,
    "summary_interval": 0,
}
DEFAULT_WITHIN = 60.0  # seconds a run may take before the test fails
_FAILURE_ACTIONS = {"stream_retry_scheduled": False, "stream_parked": True}


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed handler call, as the run logged it: retried later, or the stream ``parked``."""

    group: str
    stream: str
    position: int  # of the first event of the failed call
    global_position: int
    attempt: int  # failed calls in a row, this one included
    error: str  # "ValueError: the message"
    parked: bool


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """What a run went through: every failed call, and the streams parked when it ended."""

    failures: tuple[Failure, ...]
    parked: frozenset[str]

    def failures_of(self, stream: str) -> list[Failure]:
        return [failure for failure in self.failures if failure.stream == stream]


class _Arguments(Settings):
    """`Settings` from the arguments alone: no environment, no ``.env``."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def run_settings(url: str, **settings: Any) -> Settings:
    """The settings of a test's run: `FAST`, then ``settings`` (any `Settings` field)."""
    return _Arguments(database_url=url, **{**FAST, **settings})


async def run_until_caught_up(
    projection: Projection | Sequence[Projection],
    database: Database | str,
    *,
    within: float = DEFAULT_WITHIN,
    **settings: Any,
) -> CaughtUp:
    """Run ``projection`` until it has handled every event written so far in its categories
    (`Projection(categories=...)`, or ``categories=``), its checkpoints committed; failing
    streams are retried until they recover or are parked. ``settings`` are `Settings` fields
    (``batch_size=10``, ``group="other"``, ...).

    Give a projection with dependencies together with the ones it depends on: each runs in
    dependency order, its upstreams running meanwhile (a dependent projection pauses while
    its upstream is not running). Fails the test (AssertionError) after ``within`` seconds.
    """
    projections = [projection] if isinstance(projection, Projection) else list(projection)
    url = as_database(database).url
    ordered = _in_dependency_order(projections, settings)
    groups = {settings.get("group") or p.name for p in projections}
    parked: set[str] = set()
    with _recording(groups) as failures, anyio.move_on_after(within) as limit:
        for p in ordered:
            parked |= await _catch_up(p, url, _upstreams(p, projections), settings)
    if limit.cancelled_caught:
        names = ", ".join(p.name for p in ordered)
        raise AssertionError(
            f"{names} did not catch up within {within:g} s: a handler that does not return, "
            "or a failing stream retried for longer (see the log)"
        )
    return CaughtUp(tuple(failures), frozenset(parked))


async def run_with_crash(
    projection: Projection,
    database: Database | str,
    *,
    within: float = DEFAULT_WITHIN,
    **settings: Any,
) -> CaughtUp:
    """Handle every event written since the group's last checkpoint, then crash as ``kill -9``
    would just before the checkpoint commit, and restart: what the handlers committed stays (a
    transactional projection's positions with it), the checkpoints do not move, and the
    restart is given those events again. Returns the restart's run."""
    db = as_database(database)
    group = settings.get("group") or projection.name
    async with db.connect() as conn:
        before = await checkpoints.rows(conn, group)
    await run_until_caught_up(projection, db, within=within, **settings)
    async with db.connect() as conn, conn.transaction():
        # The commit the crash prevented is undone: the group's checkpoints as they were.
        await checkpoints.delete(conn, group)
        for row in before:
            await checkpoints.write(conn, group, row.member, row.size, row.category, row.position)
    return await run_until_caught_up(projection, db, within=within, **settings)


async def call_handler(
    projection: Projection, events: Iterable[Event], *, conn: Connection | None = None
) -> dict[str, int]:
    """Call ``projection``'s handler with ``events`` as the pipeline would, but with no
    pipeline, checkpoint or store: once per stream (in the order first seen), or once with
    every stream for a batch handler. Events with no position are numbered as the store would
    (`projector.testing.events.placed`). A transactional handler needs ``conn``, and each call
    runs in a transaction of it. Returns each stream's position to expect next."""
    projection.check_ready()
    by_stream = spans(placed(events))
    if projection.is_transactional:
        if conn is None:
            raise ConfigurationError(
                f"projection {projection.name!r} is transactional: give call_handler(..., "
                "conn=...) a connection (e.g. from `async with projector_db.connect() as conn`)"
            )
        return await _call_in_transactions(projection, by_stream, conn)
    if projection.is_batch:
        return _every_stream(await projection.handle_batch(by_stream), by_stream)
    return {name: await projection.handle(name, span) for name, span in by_stream.items()}


def _every_stream(positions: dict[str, int], by_stream: dict[str, list[Event]]) -> dict[str, int]:
    """A batch call's positions for every stream: one it left out handled all of its events."""
    return {name: positions.get(name, span[-1].position + 1) for name, span in by_stream.items()}


async def _call_in_transactions(
    projection: Projection, by_stream: dict[str, list[Event]], conn: Connection
) -> dict[str, int]:
    if projection.is_batch:
        async with conn.transaction():
            positions = await projection.handle_batch_in_transaction(conn, by_stream)
        return _every_stream(positions, by_stream)
    positions = {}
    for name, span in by_stream.items():
        async with conn.transaction():
            positions[name] = await projection.handle_in_transaction(conn, name, span)
    return positions


async def _catch_up(
    projection: Projection, url: str, upstreams: list[Projection], settings: dict[str, Any]
) -> frozenset[str]:
    """Run one projection until caught up, its upstreams (caught up already) running live."""
    runner = Runner(projection, run_settings(url, until_caught_up=True, **settings))
    async with anyio.create_task_group() as live:
        for upstream in upstreams:
            upstream_runner = Runner(upstream, run_settings(url, **settings))
            live.start_soon(upstream_runner.run, name=f"projector-testing-{upstream.name}")
        await runner.run()
        live.cancel_scope.cancel()
    return runner.parked


def _in_dependency_order(
    projections: list[Projection], settings: dict[str, Any]
) -> list[Projection]:
    """The projections, each after those it depends on; ConfigurationError when one depends
    on a group none of them is (it would wait for it for ever)."""
    by_name = {p.name: p for p in projections}
    if len(by_name) < len(projections):
        raise ConfigurationError("give each projection once, and each a name of its own")
    if len(projections) > 1 and ({"group", "categories"} & settings.keys()):
        raise ConfigurationError(
            "group= and categories= name one projection's: with several, give each "
            "Projection(name, categories=[...])"
        )
    for p in projections:
        if not (p.categories or settings.get("categories")):
            raise ConfigurationError(
                f"projection {p.name!r} reads no category: give Projection({p.name!r}, "
                "categories=[...]), or run_until_caught_up(..., categories=[...])"
            )
    ordered: list[Projection] = []

    def visit(p: Projection, path: tuple[str, ...]) -> None:
        if p in ordered:
            return
        if p.name in path:
            raise ConfigurationError(f"the projections depend on each other: {path}")
        for upstream in _upstreams(p, projections, strict=True):
            visit(upstream, (*path, p.name))
        ordered.append(p)

    for p in projections:
        visit(p, ())
    return ordered


def _upstreams(
    projection: Projection, projections: list[Projection], *, strict: bool = False
) -> list[Projection]:
    by_name = {p.name: p for p in projections}
    missing = [d.group for d in projection.depends_on if d.group not in by_name]
    if missing and strict:
        raise ConfigurationError(
            f"projection {projection.name!r} depends on {', '.join(missing)}: run it "
            f"together with the projection of each (run_until_caught_up([upstream, "
            f"{projection.name}], ...)), or it waits for them for ever"
        )
    return [by_name[d.group] for d in projection.depends_on if d.group in by_name]


class _FailureLog(logging.Handler):
    """Collects the failed calls the runners of ``groups`` log."""

    def __init__(self, groups: set[str]) -> None:
        super().__init__(logging.WARNING)
        self.groups = groups
        self.failures: list[Failure] = []

    def emit(self, record: logging.LogRecord) -> None:
        fields = record.__dict__
        parked = _FAILURE_ACTIONS.get(fields.get("action", ""))
        # A consumer group's member logs as <group>-<member> (group names have no '-').
        group = str(fields.get("group", "")).partition("-")[0]
        if parked is None or group not in self.groups:
            return
        self.failures.append(
            Failure(
                group=fields["group"],
                stream=fields["stream"],
                position=fields["position"],
                global_position=fields["global_position"],
                attempt=fields["attempt"],
                error=fields["error"],
                parked=parked,
            )
        )


@contextmanager
def _recording(groups: set[str]) -> Iterator[list[Failure]]:
    """The failed calls logged meanwhile (the log actions are a stable interface)."""
    logger = logging.getLogger("projector")
    handler, level = _FailureLog(groups), logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)  # retries are warnings: they must be logged
    logger.addHandler(handler)
    try:
        yield handler.failures
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
