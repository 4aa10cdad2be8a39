"""Failing streams, held out of the read path: `failing list|retry|skip` (`parked`, the old
name, still answers)."""

from __future__ import annotations

import dataclasses
import uuid
from functools import partial
from typing import Any

import click

from projector.admin import failing as failing_streams
from projector.cli.options import (
    console,
    database_call,
    json_line,
    reporting_errors,
    settings_options,
)
from projector.errors import ConfigurationError


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
