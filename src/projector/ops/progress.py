"""A catch-up progress bar on an interactive terminal: events handled of events to go, rate, ETA.

Shown only while the first catch-up runs, on a terminal, and never when output is piped, so log
files and log collectors never see it. Log lines written meanwhile go through rich's live
display (see `logs.configure`, whose handler writes to whatever ``sys.stderr`` is now), above the
bar, instead of through it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from projector.ops.lag import LagReading

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

REFRESH = 0.5  # seconds between redraws
MEASURE_EVERY = 5  # redraws between lag measurements


def wanted(*, disabled: bool) -> bool:
    return not disabled and sys.stderr.isatty()


class CatchUpProgress:
    """Draws the events handled (as ``handled()`` counts them) against the lag until caught up."""

    async def run(
        self, measure: Callable[[], Awaitable[LagReading | None]], handled: Callable[[], int]
    ) -> None:
        """Draw until the lag is 0 (then remove the bar); cancel to stop earlier."""
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
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("catch-up", total=None, rate="-")
            await self._draw(bar, task, measure, handled)

    async def _draw(
        self,
        bar: Progress,
        task: TaskID,
        measure: Callable[[], Awaitable[LagReading | None]],
        handled: Callable[[], int],
    ) -> None:
        total: int | None = None
        start = handled()
        tick, last = 0, start
        while True:
            if tick % MEASURE_EVERY == 0:
                # Counted as the measurement starts: what is handled while it runs is still
                # in its figure, and counting it twice would make the total creep up.
                before = handled()
                reading = await measure()
                if reading is not None:
                    to_go = sum(lag.events for lag in reading.categories.values())
                    if to_go == 0:
                        return
                    total = before - start + to_go
            now = handled()
            rate = (now - last) / REFRESH if tick else 0.0
            last = now
            bar.update(task, completed=now - start, total=total, rate=f"{rate:,.0f}")
            tick += 1
            await anyio.sleep(REFRESH)
