"""The ``projector`` command: thin commands over the modules, no logic of their own."""

from __future__ import annotations

import click

from projector.cli import commands, operations


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
    operations.parked,
):
    main.add_command(command)
