"""The ``projector`` command: thin commands over the modules, no logic of their own."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

import anyio
import click

from projector import demo, logs, migrate
from projector.errors import ConfigurationError, HandlerError, ProjectorError
from projector.projection import load_projection
from projector.runner import Runner, serve
from projector.settings import Settings, flag_for, load_settings

logger = logging.getLogger("projector")

F = TypeVar("F", bound=Callable[..., Any])

RUN_SETTINGS = (
    "database_url",
    "categories",
    "group",
    "consumer_group_member",
    "consumer_group_size",
    "no_standby",
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
    "log_level",
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
    kind: type = int if annotation in (int, int | None) else float if annotation is float else str
    return click.option(flag, name, type=kind, default=None, help=help_text)


def _run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` until it returns or a signal stops it gracefully."""
    with reporting_errors():
        anyio.run(serve, main)


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
        logs.configure(settings.log_level)
        # Like `python -m`, let the working directory's modules be imported.
        sys.path.insert(0, os.getcwd())
        runner = Runner(load_projection(target), settings)
    _run_async(runner.run)


@main.command("migrate")
@settings_options("database_url", "log_level")
@click.option(
    "--message-store",
    is_flag=True,
    help="also create projector's own Message DB-compatible store (skipped if one exists)",
)
def migrate_command(message_store: bool, **flags: Any) -> None:
    """Create or upgrade projector's tables (and, on request, a message store)."""
    with reporting_errors():
        settings = load_settings(**_given(flags))
        logs.configure(settings.log_level)
        url = _require_url(settings)
        if message_store:
            created = migrate.install_message_store(url)
            click.echo("message store created" if created else "message store already present")
        migrate.upgrade(url)
        click.echo("projector tables are up to date")


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


def _given(flags: dict[str, Any]) -> dict[str, Any]:
    """Flags the user gave (click passes None or () for the others)."""
    return {k: v for k, v in flags.items() if v not in (None, ())}


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigurationError(
            "no database: pass --database-url postgresql://... or set PROJECTOR_DATABASE_URL"
        )
    return settings.database_url
