"""The ``projector`` command: thin commands over the modules, no logic of their own."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.table import Table

from projector import database, demo, groups, logs, member_index, migrate, status, waiting
from projector import notify as notifications
from projector import parked as parked_streams
from projector.database import Connection
from projector.errors import ConfigurationError, HandlerError, ProjectorError
from projector.projection import load_projection
from projector.runner import Runner, backend_options, collect_garbage_less_often, serve
from projector.settings import Settings, flag_for, load_settings

logger = logging.getLogger("projector")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

RUN_SETTINGS = (
    "database_url",
    "categories",
    "group",
    "consumer_group_member",
    "consumer_group_size",
    "no_standby",
    "on_failure",
    "retry_base",
    "retry_cap",
    "retry_max_attempts",
    "handler_timeout",
    "stuck_after",
    "outage_limit",
    "batch_size",
    "tail_sleep",
    "max_concurrent_streams",
    "max_read_ahead",
    "checkpoint_interval",
    "shutdown_timeout",
    "from_tail",
    "until_caught_up",
    "pool_size",
    "connect_timeout",
    "event_loop",
    "log_level",
    "log_format",
    "summary_interval",
    "no_progress",
    "metrics_port",
    "metrics_host",
    "ready_max_lag",
    "health_max_db_age",
)


def settings_options(*names: str) -> Callable[[F], F]:
    """Click options for the named settings, described once, in `Settings`."""

    def decorate(command: F) -> F:
        for name in reversed(names):
            command = _option(name)(command)
        return command

    return decorate


def _option(name: str) -> Callable[[F], F]:
    field = Settings.model_fields[name]
    env = f"PROJECTOR_{name.upper()}"
    default = field.default if field.default not in (None, ()) else "none"
    help_text = f"{field.description} [env {env}; default {default}]"
    if name == "categories":
        return click.option(
            "--category",
            "-c",
            "categories",
            multiple=True,
            help=help_text.replace("comma-separated", "repeat the flag"),
        )
    flag = flag_for(name)
    if field.annotation is bool:
        return click.option(flag, name, is_flag=True, default=None, help=help_text)
    annotation = field.annotation
    kind: click.ParamType[Any] | type = str
    if annotation in (int, int | None):
        kind = int
    elif annotation in (float, float | None):
        kind = float
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kind = click.Choice([member.value for member in annotation])
    return click.option(flag, name, type=kind, default=None, help=help_text)


def _run_async(main: Callable[[], Coroutine[Any, Any, None]], settings: Settings) -> None:
    """Run ``main`` until it returns or a signal stops it gracefully."""
    with reporting_errors():
        anyio.run(serve, main, backend_options=backend_options(settings))


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn projector's errors into one line on stderr and an exit code (2: bad input)."""
    try:
        yield
    except (ProjectorError, BaseExceptionGroup) as exc:
        error = _projector_error(exc)
        if error is None:
            raise
        if isinstance(error, HandlerError):
            logger.error(
                "stopped: %s", error, exc_info=error.__cause__, extra={"action": "handler_failed"}
            )
        click.echo(f"error: {error}", err=True)
        sys.exit(2 if isinstance(error, ConfigurationError) else 1)


def _projector_error(exc: BaseException) -> ProjectorError | None:
    """The ProjectorError that ended a run, looking inside task groups' exception groups."""
    if isinstance(exc, ProjectorError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _projector_error(inner)
            if found is not None:
                return found
    return None


@click.group()
@click.version_option(package_name="projector")
def main() -> None:
    """projector keeps read models up to date from a Message DB-style event store in Postgres."""


@main.command()
@click.argument("target")
@settings_options(*RUN_SETTINGS)
def run(target: str, **flags: Any) -> None:
    """Run the projection TARGET (MODULE:ATTR, e.g. shop.projections:balances)."""
    with reporting_errors():
        settings = load_settings(**_given(flags))
        logs.configure(settings.log_level, settings.log_format)
        # Like `python -m`, let the working directory's modules be imported.
        sys.path.insert(0, os.getcwd())
        runner = Runner(load_projection(target), settings)
    collect_garbage_less_often()
    _run_async(runner.run, settings)


@main.command("migrate")
@settings_options("database_url", "log_level")
@click.option(
    "--message-store",
    is_flag=True,
    help="also create projector's own Message DB-compatible store (skipped if one exists)",
)
@click.option(
    "--notify",
    is_flag=True,
    help="also install the trigger that wakes projectors as soon as events are written",
)
@click.option(
    "--member-index",
    "member_indexes",
    type=int,
    multiple=True,
    metavar="SIZE",
    help="also build the index that lets each member of a consumer group of SIZE read only its "
    "own events (repeatable)",
)
def migrate_command(
    message_store: bool, notify: bool, member_indexes: tuple[int, ...], **flags: Any
) -> None:
    """Create or upgrade projector's tables (and, on request, a message store)."""
    with reporting_errors():
        settings = load_settings(**_given(flags))
        logs.configure(settings.log_level)
        url = _require_url(settings)
        sizes = [member_index.check_size(size) for size in member_indexes]
        if message_store:
            created = migrate.install_message_store(url)
            click.echo("message store created" if created else "message store already present")
        migrate.upgrade(url)
        click.echo("projector tables are up to date")
        if notify:
            notifications.install(url)
            click.echo("wake-up trigger installed (projector_messages notifications)")
        for size in sizes:
            state = "built" if member_index.install(url, size) else "already present"
            name = member_index.index_name(size)
            click.echo(f"member index for groups of {size} {state} ({name})")


@main.command("demo")
@settings_options("database_url", "log_level")
@click.option("--events", default=2000, show_default=True, help="sample events to write")
@click.option("--accounts", default=100, show_default=True, help="account streams to use")
def demo_command(events: int, accounts: int, **flags: Any) -> None:
    """Write sample account events and project them into a balances table.

    Without a database URL, runs projector's own local PostgreSQL cluster (kept between runs).
    """
    with reporting_errors():
        settings = load_settings(**_given(flags))
        logs.configure(settings.log_level)
        url = settings.database_url
        if url is None:
            url, data_dir = demo.local_database()
            click.echo(f"local PostgreSQL cluster in {data_dir}")
        migrate.install_message_store(url)
        migrate.upgrade(url)
        counted, projected, expected = anyio.run(
            partial(demo.run, url, accounts=accounts, events=events)
        )
    verdict = "matches" if projected == expected else "DOES NOT match"
    click.echo(
        f"wrote {events} events to up to {accounts} account streams; demo_balances has "
        f"{counted} accounts, total {projected}, which {verdict} the total of all events "
        f"({expected})\n"
        f"project them yourself:\n"
        f"  export PROJECTOR_DATABASE_URL='{url}'\n"
        f"  projector run projector.demo:balances --until-caught-up"
    )
    sys.exit(0 if projected == expected else 1)


async def _on_connection(url: str, work: Callable[[Connection], Awaitable[T]]) -> T:
    conn = await database.connect(url)
    async with conn:
        return await work(conn)


def _database_call(flags: dict[str, Any], work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``work`` on one connection to the database the flags or environment name."""
    settings = load_settings(**_given(flags))
    logs.configure(settings.log_level)
    return anyio.run(_on_connection, _require_url(settings), work)


@main.command()
@click.option("--group", required=True, help="the consumer group to resize")
@click.option("--size", type=int, required=True, help="its new number of members")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@settings_options("database_url", "log_level")
def rebalance(group: str, size: int, dry_run: bool, **flags: Any) -> None:
    """Change a consumer group's size (every member must be stopped).

    Each category restarts, for every new member, from the lowest checkpoint of the old ones:
    events between it and a member's old checkpoint are delivered again.
    """
    with reporting_errors():
        plan = _database_call(
            flags, partial(groups.rebalance, group=group, size=size, dry_run=dry_run)
        )
    verb = "would restart" if dry_run else "restarted"
    click.echo(f"group {group}: {plan.old_size} -> {plan.new_size} members")
    for category, position in plan.positions.items():
        click.echo(f"  {category}: members 0..{size - 1} {verb} at {position}")
    for note in plan.notes:
        click.echo(f"  note: {note}")
    if dry_run:
        click.echo("dry run: nothing changed")


@main.command("status")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON document, for scripts")
@settings_options("database_url", "log_level")
def status_command(group: str | None, as_json: bool, **flags: Any) -> None:
    """How far behind each group member is, per category (reads the database only)."""
    with reporting_errors():
        rows = _database_call(flags, partial(status.collect, group=group))
    if as_json:
        click.echo(status.to_json(rows))
    else:
        _console().print(status.render(rows))


@main.command("wait")
@click.option("--group", required=True, help="the group that must have handled it")
@click.option("--position", type=int, required=True, help="the global position of the event")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds to wait")
@settings_options("database_url", "log_level")
def wait_command(group: str, position: int, timeout: float, **flags: Any) -> None:
    """Wait until GROUP has handled the event at global POSITION (exit 1 on timeout)."""
    with reporting_errors():
        settings = load_settings(**_given(flags))
        url = _require_url(settings)
        anyio.run(partial(waiting.wait_for, url, group, position, timeout=timeout))
    click.echo(f"{group} has handled global position {position}")


@main.group()
def checkpoints() -> None:
    """Show or change checkpoints (members of the group must be stopped to change them)."""


@checkpoints.command("list")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@settings_options("database_url", "log_level")
def checkpoints_list(group: str | None, as_json: bool, **flags: Any) -> None:
    """Every checkpoint: group, member, category, position, size, last written."""
    with reporting_errors():
        rows = _database_call(flags, partial(groups.list_checkpoints, group=group))
    if as_json:
        for row in rows:
            click.echo(_json_line(row))
        return
    table = Table("group", "member", "category", "position", "size", "last written", box=None)
    for row in rows:
        table.add_row(
            row.group,
            str(row.member),
            row.category,
            str(row.position),
            str(row.size),
            row.updated_at.isoformat(timespec="seconds"),
        )
    _console().print(table)


@checkpoints.command("set")
@click.option("--group", required=True)
@click.option("--category", required=True)
@click.option("--position", type=int, required=True, help="the next global position to read")
@click.option("--member", type=int, default=0, show_default=True)
@settings_options("database_url", "log_level")
def checkpoints_set(group: str, category: str, position: int, member: int, **flags: Any) -> None:
    """Set where a member resumes in a category (skip ahead, or replay from an earlier point)."""
    with reporting_errors():
        row = _database_call(
            flags,
            partial(
                groups.set_checkpoint,
                group=group,
                category=category,
                position=position,
                member=member,
            ),
        )
    click.echo(f"{row.name} {row.category}: next position {row.position}")


@checkpoints.command("reset")
@click.option("--group", required=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@settings_options("database_url", "log_level")
def checkpoints_reset(group: str, yes: bool, **flags: Any) -> None:
    """Delete every checkpoint of a group: its members start again from the beginning."""
    if not yes:
        click.confirm(f"delete every checkpoint of group {group!r}?", abort=True)
    with reporting_errors():
        rows = _database_call(flags, partial(groups.reset_group, group=group))
    click.echo(f"deleted {len(rows)} checkpoint(s) of group {group}")


@main.group()
def parked() -> None:
    """Streams set aside after their handler kept failing (see README, Failures)."""


@parked.command("list")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@settings_options("database_url", "log_level")
def parked_list(group: str | None, as_json: bool, **flags: Any) -> None:
    """Every parked stream: where it stopped, the event, the error."""
    with reporting_errors():
        rows = _database_call(flags, partial(parked_streams.list_parked, group=group))
    if as_json:
        for row in rows:
            click.echo(_json_line(row))
        return
    table = Table(
        "group",
        "stream",
        "position",
        "event id",
        "type",
        "attempts",
        "parked at",
        "error",
        box=None,
    )
    for row in rows:
        table.add_row(
            row.group,
            row.stream_name,
            str(row.position),
            str(row.event_id),
            row.event_type,
            str(row.attempts),
            row.parked_at.isoformat(timespec="seconds"),
            row.error,
        )
    _console().print(table)


@parked.command("retry")
@click.argument("stream", required=False)
@click.option("--all", "every", is_flag=True, help="every parked stream of the group")
@click.option("--group", required=True)
@settings_options("database_url", "log_level")
def parked_retry(stream: str | None, every: bool, group: str, **flags: Any) -> None:
    """Replay STREAM (or --all) from its first unhandled event, by the runner that owns it."""
    if (stream is not None) == every:
        click.echo("error: give one STREAM or --all", err=True)
        sys.exit(2)
    with reporting_errors():
        streams = _database_call(
            flags, partial(parked_streams.request_retry, group=group, stream_name=stream)
        )
    click.echo(f"retry requested for {len(streams)} stream(s); the running projector replays them")


@parked.command("skip")
@click.argument("stream")
@click.argument("event_id", type=click.UUID)
@click.option("--group", required=True)
@settings_options("database_url", "log_level")
def parked_skip(stream: str, event_id: uuid.UUID, group: str, **flags: Any) -> None:
    """Skip a parked STREAM's failing event EVENT_ID on purpose, and replay what follows it."""
    with reporting_errors():
        row = _database_call(
            flags,
            partial(parked_streams.skip_event, group=group, stream_name=stream, event_id=event_id),
        )
    click.echo(f"{row.stream_name}: skipping event {event_id}; replay from position {row.position}")


def _json_line(row: Any) -> str:
    """A dataclass row as one JSON object; times in ISO 8601, ids as strings."""

    def encode(value: object) -> str:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    return json.dumps(dataclasses.asdict(row), default=encode)


def _console() -> Console:
    """Tables at full width when piped, where rich would otherwise assume 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=250)


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (click passes None or () for the others)."""
    return {k: v for k, v in flags.items() if v not in (None, ())}


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigurationError(
            "no database: pass --database-url postgresql://... or set PROJECTOR_DATABASE_URL"
        )
    return settings.database_url
