"""The catch-up progress bar on an interactive terminal (rich): the figures are
`projector.telemetry.progress`'.

Log lines written meanwhile go through rich's live display (see `logs.configure`, whose
handler writes to whatever ``sys.stderr`` is now), above the bar, instead of through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from projector.telemetry.progress import Bar

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class _RichBar:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def update(self, *, completed: int, total: int | None, rate: str) -> None:
        self._progress.update(self._task, completed=completed, total=total, rate=rate)


@contextmanager
def terminal_bar() -> Iterator[Bar]:
    """A transient bar on stderr: catching up, the bar, done of total, rate, time left."""
    # Imported here: only a terminal shows the bar, and a runner starts faster without rich.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("catching up"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>9} events/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield _RichBar(progress, progress.add_task("catch-up", total=None, rate="-"))
