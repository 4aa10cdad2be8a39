"""The docs' getting-started page, followed step by step: its shell blocks run in order, in a
folder holding the projection the page says to save, against the demo's own PostgreSQL.

A step the test does not know how to take fails it, so a new step in the page comes with its
translation here. The only liberties: `make demo` and `make demo-stop` run the same command
with this test's data folder, and the virtualenv is the one running the tests.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
DEMO_EVENTS = 2000  # what the page says `make demo` writes, and the projection prints


def steps(section: str) -> list[str]:
    """The command lines of the shell blocks of one section of the page, in order."""
    text = PAGE.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```sh\n(.*?)^```", body, re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def projection_code() -> str:
    """The page's one Python block: the projection it says to save as my_projection.py."""
    blocks: list[str] = re.findall(r"^```python\n(.*?)^```", PAGE.read_text(), re.M | re.S)
    assert len(blocks) == 1, "the page should show one projection to save"
    return blocks[0]


class Reader:
    """A reader following the page in a folder of their own."""

    def __init__(self, folder: Path, data_dir: Path) -> None:
        self.folder = folder
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if k != "PROJECTOR_DATABASE_URL"}
        self.printed: list[str] = []  # what each `projector run` printed
        self.demo_url = ""  # the URL `make demo` tells the reader to export

    def take(self, line: str) -> subprocess.CompletedProcess[str] | None:
        words = shlex.split(line, comments=True)
        if words == ["make", "demo"]:
            return self.projector("demo", "--data-dir", str(self.data_dir))
        if words == ["make", "demo-stop"]:
            return self.projector("demo", "--stop", "--data-dir", str(self.data_dir))
        if words == ["source", ".venv/bin/activate"]:
            return None  # the tests' own interpreter is projector's virtualenv
        if words[:1] == ["export"] and words[1].startswith("PROJECTOR_DATABASE_URL="):
            assert self.demo_url, "the demo printed no URL to export"
            self.env["PROJECTOR_DATABASE_URL"] = self.demo_url
            return None
        assert words[0] == "projector", f"a step this test cannot take: {line!r}"
        done = self.projector(*words[1:])
        if words[1] == "run":
            self.printed.append(done.stdout)
        return done

    def projector(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "projector", *args],
            cwd=self.folder,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, f"projector {' '.join(args)}: {done.stderr[-2000:]}"
        if args[:1] == ("demo",) and "--stop" not in args:
            found = re.search(r"export PROJECTOR_DATABASE_URL='([^']+)'", done.stdout)
            if found:
                self.demo_url = found.group(1)
        return done


def test_the_getting_started_page_works_as_written(cluster_dir: Path, tmp_path: Path) -> None:
    reader = Reader(tmp_path, cluster_dir)

    for line in steps("The demo"):
        reader.take(line)
    (tmp_path / "my_projection.py").write_text(projection_code())
    outcomes = [reader.take(line) for line in steps("Run a projection yourself")]

    first, second = reader.printed
    assert len(first.splitlines()) == DEMO_EVENTS, "the first run prints every event"
    assert len(second.splitlines()) == DEMO_EVENTS, "the second run prints only the new events"
    printed = "".join(done.stdout for done in outcomes if done is not None)
    assert re.search(r"^printer +demo_account", printed, re.MULTILINE), "status shows the group"
    assert printed.rstrip().endswith("demo PostgreSQL stopped")
