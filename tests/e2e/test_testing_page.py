"""The testing page's example suite passes as a reader would run it: its three files written
into a folder of their own, and pytest run there in a process of its own, with projector's
plugin loaded by its entry point (nothing of this repository's test setup); under
``-p no:cacheprovider`` and on two pytest-xdist workers at once, as the page says both work.

Both runs use the session's server through ``PROJECTOR_TEST_DATABASE_URL``, as the page says a
reader may, and ``CI=true``, so that a missing server would fail them rather than skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import ADMIN_URL_VARIABLE, PgServer

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
FILES = ("projections.py", "conftest.py", "test_projections.py")
TESTS = 6  # the page's test module's tests, every one of which must pass


def page_files() -> dict[str, str]:
    """The page's titled Python blocks, by the file name each is shown under."""
    blocks = re.findall(r'^```python title="([\w.]+)"\n(.*?)^```', PAGE.read_text(), re.M | re.S)
    return dict(blocks)


@pytest.fixture
def reader_folder(tmp_path: Path) -> Path:
    files = page_files()
    assert sorted(files) == sorted(FILES)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_pages_example_suite_passes_in_a_folder_of_its_own(
    reader_folder: Path, pg_server: PgServer
) -> None:
    env = {**os.environ, ADMIN_URL_VARIABLE: pg_server.admin_url, "CI": "true"}
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"],
        cwd=reader_folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"{TESTS} passed" in result.stdout
    assert "created: 2/2 workers" in result.stdout
    assert not (reader_folder / ".pytest_cache").exists()
