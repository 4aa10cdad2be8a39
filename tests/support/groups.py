"""Helpers for consumer-group tests: members run in-process, and `projector` runs as a process
whose stderr and handled events are files a test polls (never pipes it could block on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from projector import Projection
from projector.ops import groups
from projector.storage import database
from projector.storage.checkpoints import CheckpointRow
from tests.support.projecting import Recorder, run_projection, settings_for

CATEGORY = "account"

PROJECTOR = [sys.executable, "-m", "projector"]

# Each process appends "stream position global_position" lines to its own HANDLED_FILE.
HANDLERS = """
import os
from projector import Event, Projection

balances = Projection("balances")

@balances.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    with open(os.environ["HANDLED_FILE"], "a") as out:
        for event in events:
            out.write(f"{stream_name} {event.position} {event.global_position}\\n")
"""


async def run_members(
    url: str, members: Mapping[int, Recorder | Projection], *, size: int, **overrides: Any
) -> None:
    """Run the given members of a group of ``size`` at once, each projecting its projection (a
    Recorder's records into it); they read ``CATEGORY`` unless ``overrides`` say otherwise."""
    async with anyio.create_task_group() as tasks:
        for member, runs in members.items():
            settings = settings_for(
                url,
                **{"categories": (CATEGORY,), "member": member, "group_size": size, **overrides},
            )
            projection = runs if isinstance(runs, Projection) else runs.projection()
            tasks.start_soon(run_projection, projection, settings)


async def group_checkpoints(url: str, group: str) -> list[CheckpointRow]:
    conn = await database.connect(url)
    async with conn:
        return await groups.list_checkpoints(conn, group)


async def category_head(url: str, category: str = CATEGORY) -> int:
    """The category's last global position (the category must not be empty)."""
    conn = await database.connect(url)
    async with conn:
        row = await (
            await conn.execute(
                "SELECT max(global_position) FROM message_store.messages"
                " WHERE message_store.category(stream_name) = %s",
                (category,),
            )
        ).fetchone()
    assert row is not None
    assert row[0] is not None, f"category {category} is empty"
    return int(row[0])


def run_projector(
    workdir: Path, *args: str, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `projector` to its end in ``workdir``; ``stdin`` is what the user types, and a
    `projector run` records what it handles in ``workdir/handled``."""
    return subprocess.run(
        [*PROJECTOR, *args],
        cwd=workdir,
        env={**os.environ, "HANDLED_FILE": str(workdir / "handled")},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class ProjectorProcess:
    """A `projector` process whose stderr and handled events go to files in ``workdir``."""

    popen: subprocess.Popen[bytes]
    stderr_path: Path
    handled_path: Path

    @classmethod
    def start(
        cls, workdir: Path, name: str, *args: str, env: dict[str, str] | None = None
    ) -> ProjectorProcess:
        stderr_path = workdir / f"{name}.stderr"
        handled_path = workdir / f"{name}.handled"
        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [*PROJECTOR, *args],
                cwd=workdir,
                env={**os.environ, "HANDLED_FILE": str(handled_path), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        return cls(popen, stderr_path, handled_path)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def handled(self) -> list[tuple[str, int, int]]:
        """The events handled so far, as (stream, position, global position)."""
        text = self.handled_path.read_text() if self.handled_path.exists() else ""
        # The process may be writing as we read: a line without its newline is not done yet.
        lines = text.splitlines()[: text.count("\n")]
        return [(s, int(p), int(g)) for s, p, g in (line.split() for line in lines)]

    def wait(self, *, timeout: float = 60) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, *, timeout: float = 30) -> int:
        """SIGTERM, as an operator stops it; its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)
