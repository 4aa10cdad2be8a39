"""`projector` as a user runs it: a process run to its end, or started and stopped with signals,
whose output and handled events are files a test polls (never pipes it could block on).

Both run in a folder of the test's own (``workdir``), with the repository on PYTHONPATH, so that
``tests.support.shop_projections:balances`` (see there) can be run; each process records what its
handler was given in a file of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECTOR = [sys.executable, "-m", "projector"]
BALANCES = "tests.support.shop_projections:balances"
EXACTLY_ONCE = "tests.support.shop_projections:exactly_once"


def environment(handled: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """A `projector` process's environment: ours without any ``PROJECTOR_`` setting (a test
    gives its own), the repository importable, ``handled`` as the file its handler records
    into, and ``env`` on top."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**inherited, "PYTHONPATH": path, "HANDLED_FILE": str(handled), **(env or {})}


def run_projector(
    workdir: Path,
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `projector` to its end in ``workdir``; ``stdin`` is what the user types, and a
    `projector run` records what it handles in ``workdir/handled`` (see `handled`)."""
    return subprocess.run(
        [*PROJECTOR, *args],
        cwd=workdir,
        env=environment(workdir / "handled", env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def calls(path: Path) -> list[tuple[str, list[tuple[int, int]]]]:
    """The calls recorded in the file ``path`` so far: stream, and (position, global position)
    of each event it was given."""
    text = path.read_text() if path.exists() else ""
    # The process may be writing as we read: a line without its newline is not done yet.
    lines = text.splitlines()[: text.count("\n")]
    return [
        (stream, [(int(p), int(g)) for p, g in (event.split(":") for event in events)])
        for stream, *events in (line.split() for line in lines)
    ]


def handled(path: Path) -> list[tuple[str, int, int]]:
    """The events recorded in the file ``path`` so far, as (stream, position, global position),
    in the order they were handled."""
    return [(stream, p, g) for stream, events in calls(path) for p, g in events]


@dataclass
class ProjectorProcess:
    """A `projector` process whose stderr and handled events go to files in ``workdir``."""

    popen: subprocess.Popen[bytes]
    stderr_path: Path
    handled_path: Path

    @classmethod
    def start(
        cls,
        workdir: Path,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        ignore_sigint: bool = False,
    ) -> ProjectorProcess:
        """Start `projector` in ``workdir``, its files named after ``name``; with
        ``ignore_sigint`` it starts with SIGINT ignored, as a script's ``projector run ... &``
        does."""
        stderr_path = workdir / f"{name}.stderr"
        handled_path = workdir / f"{name}.handled"

        def ignoring() -> None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        with stderr_path.open("wb") as stderr:
            popen = subprocess.Popen(
                [*PROJECTOR, *args],
                cwd=workdir,
                env=environment(handled_path, env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=ignoring if ignore_sigint else None,
            )
        return cls(popen, stderr_path, handled_path)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def handled(self) -> list[tuple[str, int, int]]:
        """The events handled so far, as (stream, position, global position)."""
        return handled(self.handled_path)

    def calls(self) -> list[tuple[str, list[tuple[int, int]]]]:
        """The handler calls that returned so far (see `calls`)."""
        return calls(self.handled_path)

    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, *, timeout: float = 60) -> int:
        return self.popen.wait(timeout=timeout)

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    def stop(self, *, timeout: float = 30) -> int:
        """SIGTERM, as an operator stops it; its exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout=timeout)

    def kill(self) -> int:
        """SIGKILL (if it still runs); its exit code."""
        if self.popen.poll() is None:
            self.popen.kill()
        return self.popen.wait(timeout=30)
