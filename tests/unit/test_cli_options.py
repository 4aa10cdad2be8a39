"""The command line's own consistency: every option says what it is for."""

from __future__ import annotations

from collections.abc import Iterator

import click

from projector.cli import main


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")
    else:
        yield path, command


def test_every_option_of_every_command_has_help_text() -> None:
    silent = [
        f"{path} {'/'.join(param.opts)}"
        for path, command in _commands(main, "projector")
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]

    assert silent == []
