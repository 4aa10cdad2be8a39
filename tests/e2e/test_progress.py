"""The catch-up progress bar: drawn on an interactive terminal, never into piped output."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.support.cli import BALANCES, PROJECTOR, environment, run_projector
from tests.support.projecting import write_events

SLOW = {"HANDLER_DELAY": "0.01"}


@pytest.fixture
def backlog(own_store_url: str) -> str:
    """A database with 300 events to catch up with; its URL."""
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(300)})
    return own_store_url


def _args(url: str) -> list[str]:
    return [
        *("run", BALANCES, "-c", "account", "--until-caught-up", "--batch-size", "50"),
        *("--max-concurrent-streams", "2", "--database-url", url),
    ]


def test_an_interactive_terminal_shows_the_catch_up_progress(
    tmp_path: Path, backlog: str
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(  # stderr a terminal: what tests.support.cli never gives
        [*PROJECTOR, *_args(backlog)],
        cwd=tmp_path,
        env=environment(tmp_path / "handled", SLOW),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the process is gone
            break
        if not chunk:
            break
        output += chunk
    os.close(controller)

    assert process.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "catching up" in text
    assert "events/s" in text
    assert "action=caught_up" in text  # log lines still reach the terminal


def test_piped_output_has_no_progress_bar(tmp_path: Path, backlog: str) -> None:
    result = run_projector(tmp_path, *_args(backlog), env=SLOW)

    assert result.returncode == 0, result.stderr
    assert "catching up" not in result.stderr
    assert all(line[:4].isdigit() for line in result.stderr.splitlines())  # only log lines
