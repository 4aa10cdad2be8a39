"""What every command shares: options for settings, one-line errors, one-off connections."""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import anyio
import click

from projector.errors import (
    ConfigurationError,
    HandlerError,
    ParkedStreamsError,
    ProjectorError,
    find_error,
)
from projector.process import backend_options, serve
from projector.settings import Settings, flag_for, load_settings, value_range
from projector.storage import database
from projector.storage.database import Connection
from projector.telemetry import logs

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger("projector")

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

# Every setting is a flag of `projector run`, in the order `Settings` declares them (grouped
# there by concern): a new setting needs no second list.
RUN_SETTINGS = tuple(Settings.model_fields)


def settings_options(*names: str) -> Callable[[F], F]:
    """Click options for the named settings, described once, in `Settings`."""

    def decorate(command: F) -> F:
        for name in reversed(names):
            command = option_for(name)(command)
        return command

    return decorate


def option_for(name: str) -> Callable[[F], F]:
    field = Settings.model_fields[name]
    env = f"PROJECTOR_{name.upper()}"
    default = field.default if field.default not in (None, ()) else "none"
    bounds = value_range(name)
    help_text = f"{field.description} [env {env}; default {default}"
    help_text += f"; {bounds}]" if bounds else "]"
    if name == "categories":
        return click.option(
            "--category",
            "-c",
            "categories",
            multiple=True,
            help=help_text.replace("comma-separated", "repeat the flag"),
        )
    flag = flag_for(name)
    if (field.annotation is bool and field.default is True) or field.annotation == bool | None:
        # On by default (or by another setting): --name/--no-name, for the way off.
        return click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
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


class Seconds(click.FloatRange):
    """A duration in decimal seconds, within a range; nan and infinity are refused (nan would
    pass any range check)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def iso_time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A click callback: an ISO 8601 time (``2026-12-01``, ``2026-12-01T08:30:00+01:00``,
    ``...Z``) as a datetime."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time: give e.g. 2026-12-01T08:30:00Z"
        ) from None


def run_async(main: Callable[[], Coroutine[Any, Any, None]], settings: Settings) -> None:
    """Run ``main`` until it returns or a signal stops it gracefully."""
    with reporting_errors():
        anyio.run(serve, main, backend_options=backend_options(settings))


EXIT_FAILED = 1  # the database, a handler or a running member stopped the command
EXIT_USAGE = 2  # a setting, a flag, a name or the handler module is wrong
EXIT_PARKED = 3  # caught up, but streams were parked on the way (or the event waited for was)


@contextmanager
def reporting_errors() -> Iterator[None]:
    """Turn projector's errors (a statement the database refused included: storage translates
    the driver's) into one line on stderr and an exit code (EXIT_FAILED, or EXIT_USAGE for bad
    input)."""
    try:
        yield
    except (ProjectorError, BaseExceptionGroup) as exc:
        error = find_error(exc, ProjectorError)
        if error is None:
            raise
        if isinstance(error, HandlerError):
            logger.error(
                "stopped: %s", error, exc_info=error.__cause__, extra={"action": "handler_failed"}
            )
        fail(error, exit_code(error))


def exit_code(error: ProjectorError) -> int:
    if isinstance(error, ConfigurationError):
        return EXIT_USAGE
    if isinstance(error, ParkedStreamsError):
        return EXIT_PARKED
    return EXIT_FAILED


def fail(error: BaseException | str, code: int) -> NoReturn:
    """Report ``error`` on stderr (a JSON object under ``--log-format json``) and exit."""
    logs.report_error(str(error))
    sys.exit(code)


async def on_connection(url: str, work: Callable[[Connection], Awaitable[T]]) -> T:
    conn = await database.connect(url)
    async with conn:
        return await work(conn)


def database_call(flags: dict[str, Any], work: Callable[[Connection], Awaitable[T]]) -> T:
    """Run ``work`` on one connection to the database the flags or environment name."""
    settings = load_settings(**given(flags))
    logs.configure(settings.log_level, settings.log_format)
    return anyio.run(on_connection, require_url(settings), work)


def json_line(row: Any) -> str:
    """A row (a dataclass or a dict) as one JSON object; times in ISO 8601, ids as strings."""

    def encode(value: object) -> str:
        return value.isoformat() if isinstance(value, datetime) else str(value)

    fields = row if isinstance(row, dict) else dataclasses.asdict(row)
    return json.dumps(fields, default=encode)


def console() -> Console:
    """Tables at full width when piped, where rich would otherwise assume 80 columns."""
    from rich.console import Console  # only the commands that print tables need rich

    return Console() if sys.stdout.isatty() else Console(width=250)


def given(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (click passes None or () for the others)."""
    return {k: v for k, v in flags.items() if v not in (None, ())}


def require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigurationError(
            "no database: pass --database-url postgresql://... or set PROJECTOR_DATABASE_URL"
        )
    return settings.database_url
