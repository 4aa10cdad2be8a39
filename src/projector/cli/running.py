"""The commands that set projector up and run a projection: `run`, `migrate`, `demo`."""

from __future__ import annotations

import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import click

from projector.cli.options import (
    EXIT_PARKED,
    RUN_SETTINGS,
    fail,
    given,
    reporting_errors,
    require_url,
    run_async,
    settings_options,
)
from projector.cli.progress import terminal_bar
from projector.errors import ConfigurationError
from projector.model.buckets import MAX_BUCKETS
from projector.model.events import MAX_GROUP_SIZE
from projector.model.projection import load_projection
from projector.process import collect_garbage_less_often
from projector.runner import Runner
from projector.settings import load_settings
from projector.storage import database, member_index
from projector.storage import notify as notifications
from projector.telemetry import logs

DEMO_MAX_EVENTS = 1_000_000  # written one by one: minutes at most
DEMO_MAX_ACCOUNTS = 100_000


@click.command()
@click.argument("target")
@settings_options(*RUN_SETTINGS)
def run(target: str, **flags: Any) -> None:
    """Run the projection TARGET (MODULE:ATTR, e.g. shop.projections:balances)."""
    with reporting_errors():
        settings = load_settings(**given(flags))
        logs.configure(settings.log_level, settings.log_format)
        # Like `python -m`, let the working directory's modules be imported.
        sys.path.insert(0, os.getcwd())
        runner = Runner(load_projection(target), settings, progress_bar=terminal_bar)
    collect_garbage_less_often()
    run_async(runner.run, settings)
    if runner.parked:
        fail(parked_message(runner.group, runner.parked), EXIT_PARKED)


def parked_message(group: str, parked: frozenset[str], shown: int = 10) -> str:
    names = sorted(parked)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (
        f"caught up, but {len(names)} stream(s) of group {group} are parked, their events not "
        f"handled: {', '.join(names[:shown])}{more} (`projector failing list --group {group}`; "
        "`projector failing retry` replays them once fixed)"
    )


@click.command("migrate")
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
    type=click.IntRange(max=MAX_GROUP_SIZE),  # below 2: check_size says why
    multiple=True,
    metavar="SIZE",
    help="also build the index that lets each member of a consumer group of SIZE read only its "
    "own events (repeatable)",
)
@click.option(
    "--bucket-index",
    "bucket_indexes",
    type=click.IntRange(1, MAX_BUCKETS),
    multiple=True,
    metavar="BUCKETS",
    help="also build the index that lets each member of an elastic group of BUCKETS buckets "
    "read only its own events (repeatable)",
)
def migrate_command(
    message_store: bool,
    notify: bool,
    member_indexes: tuple[int, ...],
    bucket_indexes: tuple[int, ...],
    **flags: Any,
) -> None:
    """Create or upgrade projector's tables (and, on request, a message store)."""
    from projector.storage import migrate  # Alembic and SQLAlchemy: a third of a second to import

    with reporting_errors():
        settings = load_settings(**given(flags))
        logs.configure(settings.log_level, settings.log_format)
        url = require_url(settings)
        sizes = [member_index.check_size(size) for size in member_indexes]
        if message_store:
            created = migrate.install_message_store(url)
            click.echo("message store created" if created else "message store already present")
        applied = migrate.upgrade(url)
        for step in applied:
            click.echo(f"applied {step}")
        click.echo(
            "projector tables created or upgraded (schema projector)"
            if applied
            else "projector tables already up to date"
        )
        if notify:
            notifications.install(url)
            click.echo("wake-up trigger installed (projector_messages notifications)")
        for size in sizes:
            state = "built" if member_index.install(url, size) else "already present"
            name = member_index.index_name(size)
            click.echo(f"member index for groups of {size} {state} ({name})")
        for count in bucket_indexes:
            state = "built" if member_index.install_bucket_index(url, count) else "already present"
            name = member_index.bucket_index_name(count)
            click.echo(f"bucket index for elastic groups of {count} buckets {state} ({name})")


@click.command("demo")
@settings_options("database_url", "log_level")
@click.option(
    "--events",
    type=click.IntRange(0, DEMO_MAX_EVENTS),
    default=2000,
    show_default=True,
    help="sample events to write",
)
@click.option(
    "--accounts",
    type=click.IntRange(1, DEMO_MAX_ACCOUNTS),
    default=100,
    show_default=True,
    help="account streams to use",
)
@click.option(
    "--yes",
    is_flag=True,
    help="write into the database of --database-url / PROJECTOR_DATABASE_URL without asking",
)
@click.option("--stop", is_flag=True, help="stop the local PostgreSQL the demo started, and exit")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="where the demo's local PostgreSQL lives (default: ~/.cache/projector/pg, or "
    "/var/tmp/projector-demo-pg as root)",
)
def demo_command(
    events: int, accounts: int, yes: bool, stop: bool, data_dir: Path | None, **flags: Any
) -> None:
    """Write sample events (category demo_account) and project them into table demo_balances.

    Without a database URL it runs a local PostgreSQL of its own, kept between runs (--stop
    stops it). Given one, it asks before writing there (--yes does not ask).
    """
    from projector import demo
    from projector.storage import migrate  # Alembic and SQLAlchemy: a third of a second to import

    command = _projector_command()
    with reporting_errors():
        if stop:
            stopped = demo.stop_local(data_dir)
            click.echo("demo PostgreSQL stopped" if stopped else "demo PostgreSQL was not running")
            return
        settings = load_settings(**given(flags))
        logs.configure(settings.log_level, settings.log_format)
        url = settings.database_url
        # The URL the demo itself told the user to export is its own database: no need to ask.
        local = url is None or demo.is_own_database(url, data_dir)
        if not local:
            assert url is not None
            _consent(url, events, yes=yes)
            where = "with PROJECTOR_DATABASE_URL as you gave it"
        else:
            url, local_dir = demo.local_database(data_dir)
            click.echo(f"local PostgreSQL cluster in {local_dir}")
            # The local cluster trusts local connections: its URL holds no password.
            where = f"export PROJECTOR_DATABASE_URL='{url}'"
        migrate.install_message_store(url)
        migrate.upgrade(url)
        counted, projected, expected = anyio.run(
            partial(demo.run, url, accounts=accounts, events=events)
        )
    verdict = "matches" if projected == expected else "DOES NOT match"
    click.echo(
        f"wrote {events} events to up to {accounts} {demo.CATEGORY} streams; demo_balances has "
        f"{counted} accounts, total {projected}, which {verdict} the total of all events "
        f"({expected})\n"
        f"project them yourself:\n"
        f"  {where}\n"
        f"  {command} run projector.demo:balances --until-caught-up"
    )
    if local:
        click.echo(
            f"the demo's PostgreSQL keeps running for the next time: `{command} demo --stop` "
            "(or `make demo-stop`) stops it"
        )
    sys.exit(0 if projected == expected else 1)


def _consent(url: str, events: int, *, yes: bool) -> None:
    """The demo writes into a database it did not start only once the user says so."""
    if yes:
        return
    what = (
        f"projector demo writes {events} sample events (category demo_account) and creates "
        f"table demo_balances, projector's tables and, if it has none, a message store, in "
        f"{database.describe(url)}"
    )
    if not sys.stdin.isatty():
        raise ConfigurationError(
            f"{what}: give --yes to let it, or leave PROJECTOR_DATABASE_URL and --database-url "
            "unset for a local PostgreSQL of its own"
        )
    if not click.confirm(f"{what}. Go on?", default=False):
        raise ConfigurationError("nothing written: the demo needs --yes, or no database URL")


def _projector_command() -> str:
    """How this user runs `projector`: the name when it is on the PATH, else the path of the
    command (a virtualenv's bin/), or ``python -m projector``."""
    started = Path(sys.argv[0])
    if started.name != "projector":
        return f"{sys.executable} -m projector"
    found = shutil.which("projector")
    if found is not None and Path(found).resolve() == started.resolve():
        return "projector"
    return str(started)
