"""The operator's commands for checkpoints and failing streams: list, change, replay."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from functools import partial
from typing import Any

import click

from projector.admin import failing as failing_streams
from projector.admin import groups, status
from projector.cli.options import (
    console,
    database_call,
    iso_time,
    json_line,
    reporting_errors,
    settings_options,
)
from projector.errors import ConfigurationError
from projector.model.buckets import DEFAULT_BUCKETS, MAX_BUCKETS
from projector.model.events import MAX_GROUP_SIZE, MAX_POSITION
from projector.storage.checkpoints import CheckpointRow
from projector.storage.database import Connection


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


@click.group()
def failing() -> None:
    """Streams whose handler failed: retrying, or parked once their attempts ran out (see the
    docs: Failing streams). Their events are not handled until they succeed again."""


@click.group()
def parked() -> None:
    """The old name of `projector failing`, kept: it says so on stderr."""
    click.echo("`projector parked` is now `projector failing`; the old name still works", err=True)


@click.command("list")
@click.option("--group", help="only this group")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
@settings_options("database_url", "log_level")
def failing_list(group: str | None, as_json: bool, **flags: Any) -> None:
    """Every failing stream: its state, where it stands, the event, the error, its owner."""
    with reporting_errors():
        rows = database_call(flags, partial(failing_streams.list_owned, group=group))
    if as_json:
        for row in rows:
            owner = {"member": row.member, "name": row.name}
            click.echo(json_line({**dataclasses.asdict(row.held), **owner}))
        return
    from rich.table import Table

    table = Table(
        "member",
        "stream",
        "state",
        "next attempt",
        "position",
        "event id",
        "type",
        "attempts",
        "failing since",
        "error",
        box=None,
    )
    for row in rows:
        held = row.held
        attempt = held.next_attempt_at
        table.add_row(
            row.name or held.group,
            held.stream_name,
            held.state.value,
            "-" if attempt is None else attempt.isoformat(timespec="seconds"),
            str(held.position),
            str(held.event_id),
            held.event_type,
            str(held.attempts),
            held.held_at.isoformat(timespec="seconds"),
            held.error,
        )
    console().print(table)


@click.command("retry")
@click.argument("stream", required=False)
@click.option("--all", "every", is_flag=True, help="every failing stream of the group")
@click.option("--group", required=True, help="the group that holds the stream")
@settings_options("database_url", "log_level")
def failing_retry(stream: str | None, every: bool, group: str, **flags: Any) -> None:
    """Replay STREAM (or --all) now from its first unhandled event, by the runner that owns
    it; a parked stream gets one more attempt."""
    with reporting_errors():
        if (stream is not None) == every:
            raise ConfigurationError("give one STREAM or --all")
        request = database_call(
            flags, partial(failing_streams.request_retry, group=group, stream_name=stream)
        )
    acts = _who_acts(group, request.runner_up)
    click.echo(f"retry requested for {len(request.streams)} stream(s); {acts}")


@click.command("skip")
@click.argument("stream")
@click.argument("event_id", type=click.UUID)
@click.option("--group", required=True, help="the group that holds the stream")
@settings_options("database_url", "log_level")
def failing_skip(stream: str, event_id: uuid.UUID, group: str, **flags: Any) -> None:
    """Skip a failing STREAM's event EVENT_ID on purpose, and replay what follows it."""
    with reporting_errors():
        row, runner_up = database_call(
            flags,
            partial(failing_streams.skip_event, group=group, stream_name=stream, event_id=event_id),
        )
    click.echo(
        f"{row.stream_name}: skipping event {event_id}; replay from position {row.position}; "
        f"{_who_acts(group, runner_up)}"
    )


def _who_acts(group: str, runner_up: bool) -> str:
    if runner_up:
        return "the running projector replays it within seconds"
    return (
        f"no runner of group {group} is running: the next `projector run` of the group "
        "replays it as it starts (`--until-caught-up` waits for it)"
    )


for _command in (failing_list, failing_retry, failing_skip):
    failing.add_command(_command)
    parked.add_command(_command)


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
