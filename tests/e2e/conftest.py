"""What the end-to-end tests share: the `projector` processes a test starts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cli import ProjectorProcess


@pytest.fixture
def processes() -> Iterator[list[ProjectorProcess]]:
    """Processes a test starts (it appends them); any still running at the end are killed."""
    started: list[ProjectorProcess] = []
    yield started
    for process in started:
        process.kill()
