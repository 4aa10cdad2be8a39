"""The catch-up progress bar: drawn on an interactive terminal, never into piped output."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from tests.support.projecting import write_events

SLOW = """
import anyio
from projector import Event, Projection

slow = Projection("slow")

@slow.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    await anyio.sleep(0.01)
"""


@pytest.fixture
def workdir(tmp_path: Path, own_store_url: str) -> Path:
    (tmp_path / "slow_projection.py").write_text(textwrap.dedent(SLOW))
    anyio.run(write_events, own_store_url, {f"account-{i}": 1 for i in range(300)})
    return tmp_path


def _command(url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "projector",
        "run",
        "slow_projection:slow",
        "-c",
        "account",
        "--until-caught-up",
        "--batch-size",
        "50",
        "--max-concurrent-streams",
        "2",
        "--database-url",
        url,
    ]


def test_an_interactive_terminal_shows_the_catch_up_progress(
    workdir: Path, own_store_url: str
) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        _command(own_store_url),
        cwd=workdir,
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


def test_piped_output_has_no_progress_bar(workdir: Path, own_store_url: str) -> None:
    result = subprocess.run(
        _command(own_store_url),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "catching up" not in result.stderr
    assert all(line[:4].isdigit() for line in result.stderr.splitlines())  # only log lines
