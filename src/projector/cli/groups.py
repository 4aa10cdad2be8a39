"""What operators ask of a group: `status`, `wait`, `checkpoints list|set|reset`,
`rebalance`, `group show|convert`."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

import anyio
import click

from projector.admin import groups, status, waiting
from projector.admin.waiting import MAX_WAIT
from projector.cli import render
from projector.cli.options import (
    Seconds,
    console,
    database_call,
    given,
    iso_time,
    json_line,
    reporting_errors,
    require_url,
    settings_options,
)
from projector.errors import ConfigurationError
from projector.model.buckets import DEFAULT_BUCKETS, MAX_BUCKETS
from projector.model.events import FIRST_POSITION, MAX_GROUP_SIZE, MAX_POSITION
from projector.settings import deprecated, load_settings
from projector.storage.checkpoints import CheckpointRow
from projector.storage.database import Connection
from projector.telemetry import logs


@click.command("status")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line, for scripts")
@settings_options("database_url", "log_level")
def status_command(group: str | None, as_json: bool, **flags: Any) -> None:
    """How far behind each group member is, per category (reads the database only)."""
    with reporting_errors():
        rows = database_call(flags, partial(status.collect, group=group))
    if as_json:
        click.echo(status.to_json(rows), nl=False)
    else:
        console().print(render.status_table(rows))


@click.command("wait")
@click.option("--group", required=True, help="the group that must have handled it")
@click.option(
    "--position",
    type=click.IntRange(FIRST_POSITION, MAX_POSITION),
    required=True,
    help="the global position of the event",
)
@click.option(
    "--timeout",
    type=Seconds(0, MAX_WAIT),
    default=30.0,
    show_default=True,
    envvar="PROJECTOR_WAIT_TIMEOUT",
    show_envvar=True,
    help="seconds to wait (0: look once)",
)
@settings_options("database_url", "log_level")
def wait_command(group: str, position: int, timeout: float, **flags: Any) -> None:
    """Wait until GROUP has handled the event at global POSITION (exit 1 on timeout, 3 when
    the event's stream is parked)."""
    with reporting_errors():
        settings = load_settings(**given(flags))
        url = require_url(settings)
        anyio.run(partial(waiting.wait_for, url, group, position, timeout=timeout))
    click.echo(f"{group} has handled global position {position}")


@click.group()
def checkpoints() -> None:
    """Show or change checkpoints (members of the group must be stopped to change them)."""


@checkpoints.command("list")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@settings_options("database_url", "log_level")
def checkpoints_list(group: str | None, as_json: bool, **flags: Any) -> None:
    """Every checkpoint: group, member, category, checkpoint, size, last written."""
    with reporting_errors():
        rows = database_call(flags, partial(groups.list_checkpoints, group=group))
    if as_json:
        for row in rows:
            click.echo(json_line(status.checkpoint_json(row)))
        return
    from rich.table import Table  # only printing a table needs rich

    # The JSON's names: the checkpoint is the next global position to read.
    table = Table("group", "member", "category", "checkpoint", "size", "last written", box=None)
    for row in rows:
        table.add_row(
            row.group,
            str(row.member),
            row.category,
            str(row.position),
            str(row.size),
            row.updated_at.isoformat(timespec="seconds"),
        )
    console().print(table)


@checkpoints.command("set")
@click.option("--group", required=True, help="the group whose checkpoint to set")
@click.option("--category", required=True, help="the category it applies to")
@click.option(
    "--position",
    type=click.IntRange(0, MAX_POSITION),
    help="the next global position to read",
)
@click.option("--to-head", is_flag=True, help="skip every event written so far")
@click.option(
    "--to-time",
    callback=iso_time,
    help="replay from the first event written at or after this time (ISO 8601; UTC unless "
    "it has an offset)",
)
@click.option("--force", is_flag=True, help="allow a --position past the category's head")
@click.option(
    "--create", is_flag=True, help="allow a group that has no checkpoints yet (a new group)"
)
@click.option(
    "--member",
    type=click.IntRange(0, MAX_GROUP_SIZE - 1),
    default=0,
    show_default=True,
    help="the member, in a consumer group",
)
@settings_options("database_url", "log_level")
def checkpoints_set(
    group: str,
    category: str,
    position: int | None,
    to_head: bool,
    to_time: datetime | None,
    force: bool,
    create: bool,
    member: int,
    **flags: Any,
) -> None:
    """Set where a member resumes in a category (skip ahead, or replay from an earlier point)."""
    with reporting_errors():
        if sum((position is not None, to_head, to_time is not None)) != 1:
            raise ConfigurationError("give one of --position N, --to-head or --to-time TIME")

        async def set_it(conn: Connection) -> CheckpointRow:
            if to_head:
                target = await groups.head_position(conn, category)
            elif to_time is not None:
                target = await groups.position_at(conn, category, to_time)
            else:
                assert position is not None
                target = position
            return await groups.set_checkpoint(
                conn, group, category, target, member=member, force=force, create=create
            )

        row = database_call(flags, set_it)
    click.echo(f"{row.name} {row.category}: next position {row.position}")


@checkpoints.command("reset")
@click.option("--group", required=True, help="the group whose checkpoints to delete")
@click.option("--category", help="only this category's (default: every category's)")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@settings_options("database_url", "log_level")
def checkpoints_reset(group: str, category: str | None, yes: bool, **flags: Any) -> None:
    """Delete a group's checkpoints: its members start again from the beginning."""
    which = "every checkpoint" if category is None else f"the {category} checkpoints"
    if not yes:
        click.confirm(f"delete {which} of group {group!r}?", abort=True)
    with reporting_errors():
        rows = database_call(flags, partial(groups.reset_group, group=group, category=category))
    click.echo(f"deleted {len(rows)} checkpoint(s) of group {group}")


@click.command()
@click.option("--group", required=True, help="the consumer group to resize")
@click.option(
    "--group-size",
    "size",
    type=click.IntRange(1, MAX_GROUP_SIZE),
    help="its new number of members (the --group-size its members then run with)",
)
@click.option(
    "--size",
    "old_size",
    type=click.IntRange(1, MAX_GROUP_SIZE),
    hidden=True,
    help="the old spelling of --group-size",
)
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@settings_options("database_url", "log_level")
def rebalance(
    group: str, size: int | None, old_size: int | None, dry_run: bool, **flags: Any
) -> None:
    """Change a consumer group's size (every member must be stopped; --dry-run may look while
    they run).

    Each category restarts, for every new member, from the lowest checkpoint of the old ones:
    events between it and a member's old checkpoint are delivered again.
    """
    with reporting_errors():
        size = _group_size(size, old_size, flags)
        plan = database_call(
            flags, partial(groups.rebalance, group=group, size=size, dry_run=dry_run)
        )
    if plan.old_size == plan.new_size:
        click.echo(f"group {group} already has {size} member(s): nothing changed")
        return
    verb = "would restart" if dry_run else "restarted"
    click.echo(f"group {group}: {plan.old_size} -> {plan.new_size} members")
    for category, position in plan.positions.items():
        click.echo(f"  {category}: members 0..{size - 1} {verb} at {position}")
    for note in plan.notes:
        click.echo(f"  note: {note}")
    if dry_run:
        click.echo("dry run: nothing changed")


def _group_size(size: int | None, old_size: int | None, flags: dict[str, Any]) -> int:
    """``--group-size``, or its old spelling ``--size`` (logged ``setting_deprecated``)."""
    if old_size is not None:
        if size is not None:
            raise ConfigurationError("give --group-size once (--size is its old spelling)")
        settings = load_settings(**given(flags))
        logs.configure(settings.log_level, settings.log_format)
        deprecated("--size", "--group-size")
        return old_size
    if size is None:
        raise ConfigurationError("give the group's new size: --group-size N")
    return size


@click.group("group")
def group_command() -> None:
    """Show an elastic group, or convert a fixed group into one."""


@group_command.command("show")
@click.argument("group")
@settings_options("database_url", "log_level")
def group_show(group: str, **flags: Any) -> None:
    """An elastic GROUP's members, the buckets each holds, and their last heartbeat."""
    with reporting_errors():
        view = database_call(flags, partial(groups.show_elastic, group=group))
    from rich.table import Table  # only printing a table needs rich

    table = Table("member", "host", "pid", "buckets", "heartbeat age", box=None)
    for member in view.members:
        table.add_row(
            member.member_id,
            member.host,
            str(member.pid),
            _ranges(view.owned_by(member.member_id)),
            f"{member.heartbeat_age:.1f} s",
        )
    console().print(f"elastic group {view.group}: {view.buckets} buckets")
    console().print(table)
    if view.unowned:
        console().print(f"buckets free or expired: {_ranges(view.unowned)}")


@group_command.command("convert")
@click.argument("group")
@click.option("--to-elastic", is_flag=True, required=True, help="convert to an elastic group")
@click.option(
    "--buckets",
    type=click.IntRange(1, MAX_BUCKETS),
    default=DEFAULT_BUCKETS,
    show_default=True,
    help="the elastic group's bucket count (set once)",
)
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@settings_options("database_url", "log_level")
def group_convert(group: str, to_elastic: bool, buckets: int, dry_run: bool, **flags: Any) -> None:
    """Turn a stopped fixed GROUP's checkpoints into an elastic group's bucket checkpoints
    (--dry-run may look while its members run).

    Each bucket starts at the lowest checkpoint of the old members that owned its streams:
    events between it and a member's own checkpoint are delivered once more, none is skipped.
    """
    with reporting_errors():
        plan = database_call(
            flags,
            partial(groups.convert_to_elastic, group=group, bucket_count=buckets, dry_run=dry_run),
        )
    verb = "would start" if dry_run else "start"
    click.echo(f"group {group}: {plan.old_size} member(s) -> elastic, {plan.buckets} buckets")
    for category, by_bucket in plan.positions.items():
        lowest, highest = min(by_bucket.values()), max(by_bucket.values())
        click.echo(f"  {category}: buckets {verb} at {lowest} to {highest}")
    for note in plan.notes:
        click.echo(f"  note: {note}")
    click.echo(
        "dry run: nothing changed"
        if dry_run
        else f"start its members with `projector run ... --group {group} --elastic`"
    )


def _ranges(numbers: list[int]) -> str:
    """``0-3, 7`` for [0, 1, 2, 3, 7]."""
    spans: list[list[int]] = []
    for number in sorted(numbers):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"
