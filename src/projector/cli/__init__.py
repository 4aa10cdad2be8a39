"""The ``projector`` command: thin commands over the modules, no logic of their own, and the
only place that renders for people (rich tables and the progress bar).

It may import anything in projector; nothing imports it but the entry point (and the demo,
for the progress bar).
"""

from __future__ import annotations

import signal
from types import FrameType

import click

from projector.cli import commands, operations, rebuild
from projector.process import stop_now


@click.group()
@click.version_option(package_name="projector")
def main() -> None:
    """projector keeps read models up to date from a Message DB-style event store in Postgres."""


for command in (
    commands.run,
    commands.migrate_command,
    commands.demo_command,
    commands.rebalance,
    commands.status_command,
    commands.wait_command,
    operations.checkpoints,
    operations.failing,
    operations.parked,
    operations.group_command,
    rebuild.rebuild,
    rebuild.replay_command,
):
    main.add_command(command)


def entry() -> None:
    """The ``projector`` executable: SIGINT and SIGTERM stop it from the start, whatever the
    disposition it inherited (a script's ``cmd &`` starts it with SIGINT ignored), until a
    running loop listens for them itself (`projector.process.serve`)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_while_starting)
    main()


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    stop_now(signum, f"received {signal.Signals(signum).name}: stopping now")
