"""The commands that rebuild a projection beside its live version (``projector rebuild``) and
replay one stream (``projector replay``); the logic is `projector.admin.rebuild`'s,
`projector.admin.verify`'s and `projector.admin.replay`'s."""

from __future__ import annotations

import os
import sys
from functools import partial
from typing import TYPE_CHECKING, Any

import click

from projector.admin import rebuild as rebuilding
from projector.admin import rebuild_status, replay
from projector.admin.rebuild_status import VersionStatus
from projector.admin.verify import Verification, verify
from projector.cli.options import (
    console,
    database_call,
    fail,
    reporting_errors,
    settings_options,
)
from projector.cli.render import human_duration
from projector.model.projection import Projection, load_projection
from projector.model.versions import VersionState
from projector.runtime.versions import VIEW_LOCK_TIMEOUT

if TYPE_CHECKING:
    from rich.table import Table

EXIT_REFUSED = 1


def _load(target: str) -> Projection:
    # Like `projector run`, let the working directory's modules be imported.
    sys.path.insert(0, os.getcwd())
    return load_projection(target)


@click.group()
def rebuild() -> None:
    """Rebuild a projection with no downtime: a new version built beside the live one, readers
    cut over to it once it has caught up and verifies, and back if need be (see the docs:
    Rebuilding a projection)."""


@rebuild.command("start")
@click.argument("target")
@settings_options("database_url", "log_level")
def rebuild_start(target: str, **flags: Any) -> None:
    """Set up TARGET's version (MODULE:ATTR, with version=N): its group, its schema and tables;
    then run it with `projector run TARGET` beside the live version."""
    with reporting_errors():
        projection = _load(target)
        started = database_call(flags, partial(rebuilding.start, projection=projection))
    new, live = started.version, started.live
    where = f"schema {new.schema}" if new.schema else "no schema of its own"
    click.echo(f"{new.label}: building, group {new.group}, {where}")
    if started.recorded:
        click.echo(f"recorded {live.label} as live (group {live.group}, tables in public)")
    if started.shown is not None:
        tables = ", ".join(started.shown) or "none yet"
        click.echo(
            f"readers: schema {live.projection} now has a view of each table of {live.label} "
            f"({tables}); query {live.projection}.<table> from now on"
        )
    click.echo(
        f"next: `projector run {target}` (its own deployment, beside the live one); "
        f"`projector rebuild status --projection {new.projection}` shows how far it is"
    )


@rebuild.command("status")
@click.option("--projection", help="only this projection")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line, for scripts")
@settings_options("database_url", "log_level")
def rebuild_status_command(projection: str | None, as_json: bool, **flags: Any) -> None:
    """Each version's state, group, lag (events and time), runners and time to catch up."""
    with reporting_errors():
        rows = database_call(flags, partial(rebuild_status.collect, projection=projection))
    if as_json:
        click.echo(rebuild_status.to_json(rows), nl=False)
        return
    console().print(_status_table(rows))


def _status_table(rows: list[VersionStatus]) -> Table:
    from rich.table import Table  # only printing a table needs rich

    table = Table(
        "projection",
        "version",
        "state",
        "group",
        "schema",
        "lag (events)",
        "lag (time)",
        "runner",
        "catches up",
        box=None,
        caption=None if rows else "no versions recorded: `projector rebuild start` records one",
    )
    for row in rows:
        version = row.version
        table.add_row(
            version.projection,
            str(version.version) + ("" if row.recorded else " (not recorded)"),
            version.state.value,
            version.group,
            _schema(row),
            "-" if row.lag_events is None else str(row.lag_events),
            "-" if row.lag_seconds is None else human_duration(row.lag_seconds),
            "running" if row.running else "stopped",
            _eta(row),
        )
    return table


def _schema(row: VersionStatus) -> str:
    version = row.version
    if version.schema is None:
        return "public" if version.version == 1 else "-"
    return version.schema + (" (dropped)" if version.state is VersionState.RETIRED else "")


def _eta(row: VersionStatus) -> str:
    if row.eta_seconds is None:
        return "-"
    return "caught up" if row.eta_seconds == 0 else f"in ~{human_duration(row.eta_seconds)}"


def _query_options(command: Any) -> Any:
    for option in reversed(
        (
            click.option(
                "--query",
                help="a query run with each version's schema first on the search_path: their "
                "results must match",
            ),
            click.option("--query-live", help="the query to run on the live version"),
            click.option(
                "--query-new", help="the query to run on the new one (a known transformation)"
            ),
        )
    ):
        command = option(command)
    return command


@rebuild.command("verify")
@click.option("--projection", required=True, help="the projection whose versions to compare")
@click.option("--version", type=int, help="the version to compare with the live one "
              "(default: the newest building one)")
@_query_options
@settings_options("database_url", "log_level")
def rebuild_verify(
    projection: str,
    version: int | None,
    query: str | None,
    query_live: str | None,
    query_new: str | None,
    **flags: Any,
) -> None:
    """Compare a version with the live one: row counts per table, and your query's results
    (exit 1 with what differs)."""
    with reporting_errors():
        found = database_call(
            flags,
            partial(
                verify,
                name=projection,
                version=version,
                query=query,
                query_live=query_live,
                query_new=query_new,
            ),
        )
    _print_verification(found)
    if not found.matches:
        fail(
            f"{found.new.label} differs from {found.live.label}: {found.first_difference()}",
            EXIT_REFUSED,
        )


def _print_verification(found: Verification) -> None:
    for count in found.counts:
        mark = "=" if count.live == count.new else "!="
        click.echo(
            f"  {count.table}: {count.live} row(s) (version {found.live.version}) {mark} "
            f"{count.new} (version {found.new.version})"
        )
    if found.query is not None:
        verdict = "match" if found.query.matches else "differ"
        click.echo(
            f"  query: {found.query.live_rows} row(s) (version {found.live.version}), "
            f"{found.query.new_rows} (version {found.new.version}): they {verdict}"
        )
    if found.matches:
        click.echo(f"{found.new.label} matches {found.live.label}")


@rebuild.command("cutover")
@click.option("--projection", required=True, help="the projection to cut over")
@click.option("--version", type=int, help="the building version to make live "
              "(default: the newest one)")
@click.option(
    "--max-lag",
    type=int,
    default=100,
    show_default=True,
    help="the most events the new version may lag when readers are switched to it",
)
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="seconds to wait for it to catch up (and for readers holding a view)",
)
@click.option("--force", is_flag=True, help="cut over however far behind, and unverified")
@_query_options
@settings_options("database_url", "log_level")
def rebuild_cutover(
    projection: str,
    version: int | None,
    max_lag: int,
    timeout: float,
    force: bool,
    query: str | None,
    query_live: str | None,
    query_new: str | None,
    **flags: Any,
) -> None:
    """Switch readers to the building version once it lags at most --max-lag events and
    verifies, in one transaction; the live version becomes the previous one."""
    with reporting_errors():
        switched = database_call(
            flags,
            partial(
                rebuilding.cutover,
                name=projection,
                version=version,
                max_lag=max_lag,
                within=timeout,
                force=force,
                query=query,
                query_live=query_live,
                query_new=query_new,
            ),
        )
    if switched.verification is not None:
        _print_verification(switched.verification)
    lag = switched.status.lag_events
    click.echo(
        f"{switched.live.label} is live ({'?' if lag is None else lag} events behind), "
        f"{switched.left.label} is previous: it keeps projecting until retired, so "
        f"`projector rebuild rollback --projection {projection}` can switch back"
    )
    _print_tables(switched.live.projection, switched.tables)


def _print_tables(schema: str, tables: list[str]) -> None:
    if tables:
        click.echo(f"readers' views in schema {schema}: {', '.join(tables)}")


@rebuild.command("rollback")
@click.option("--projection", required=True, help="the projection to switch back")
@click.option(
    "--timeout",
    type=float,
    default=VIEW_LOCK_TIMEOUT * 10,
    show_default=True,
    help="seconds to wait for readers holding a view",
)
@settings_options("database_url", "log_level")
def rebuild_rollback(projection: str, timeout: float, **flags: Any) -> None:
    """Switch readers back to the previous version (it kept projecting, so it is current);
    the live version becomes building again."""
    with reporting_errors():
        switched = database_call(
            flags, partial(rebuilding.rollback, name=projection, within=timeout)
        )
    lag = switched.status.lag_events
    click.echo(
        f"{switched.live.label} is live again ({'?' if lag is None else lag} events behind); "
        f"{switched.left.label} is building (it keeps projecting: cut over to it again, or "
        "retire it)"
    )
    _print_tables(switched.live.projection, switched.tables)


@rebuild.command("retire")
@click.option("--projection", required=True, help="the projection")
@click.option("--version", type=int, required=True, help="the version to retire")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@settings_options("database_url", "log_level")
def rebuild_retire(projection: str, version: int, yes: bool, **flags: Any) -> None:
    """Retire a version that is not live (its runners stopped): its schema, checkpoints,
    stream positions and held streams are dropped."""
    if not yes:
        click.confirm(
            f"drop version {version} of {projection}: its schema, checkpoints and stream "
            "positions?",
            abort=True,
        )
    with reporting_errors():
        retired = database_call(
            flags, partial(rebuilding.retire, name=projection, version=version)
        )
    found = retired.version
    if retired.schema_dropped:
        kept = f"schema {found.schema} dropped"
    else:
        kept = "its tables, in public, are left alone (drop them yourself once unused)"
    click.echo(
        f"{found.label} retired: {retired.checkpoints} checkpoint(s) of group {found.group} "
        f"deleted, with its stream positions and held streams; {kept}"
    )


@click.command("replay")
@click.argument("target")
@click.argument("stream")
@click.option("--group", help="the group to replay it in (default: the projection's version's)")
@settings_options("database_url", "log_level")
def replay_command(target: str, stream: str, group: str | None, **flags: Any) -> None:
    """Apply STREAM's events again for TARGET (MODULE:ATTR): a transactional projection's
    reset_stream hook deletes its rows and its events are applied again in one transaction;
    an at-least-once projection's runner delivers them again, in order."""
    with reporting_errors():
        projection = _load(target)
        done = database_call(
            flags,
            partial(replay.replay, projection=projection, stream_name=stream, group=group),
        )
    if done.applied is not None:
        click.echo(f"{done.group}: {stream} replayed, {done.applied} event(s) applied again")
        return
    who = (
        "the running projector delivers them within seconds"
        if done.runner_up
        else f"no runner of group {done.group} is up: its next `projector run` delivers them"
    )
    click.echo(f"{done.group}: {stream}'s events are to be delivered again; {who}")

