"""Catch-up progress: events handled of events to go, and the rate, until caught up.

These are the figures; drawing them is a `Bar`'s business (the CLI's is a rich progress bar on
an interactive terminal, `projector.cli.progress`). Shown only while the first catch-up runs,
on a terminal, and never when output is piped, so log files and log collectors never see it.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Protocol

import anyio

from projector.telemetry.lag import LagReading

REFRESH = 0.5  # seconds between redraws
MEASURE_EVERY = 5  # redraws between lag measurements


class Bar(Protocol):
    def update(self, *, completed: int, total: int | None, rate: str) -> None:
        """Show ``completed`` events of ``total`` (None: not known yet), at ``rate``."""
        ...


BarFactory = Callable[[], AbstractContextManager[Bar]]
"""Opens a bar for the length of a catch-up (and removes it after)."""


def wanted(*, disabled: bool) -> bool:
    return not disabled and sys.stderr.isatty()


class CatchUpProgress:
    """Feeds a bar the events handled (as ``handled()`` counts them) against the lag."""

    def __init__(self, bar: BarFactory) -> None:
        self._bar = bar

    async def run(
        self, measure: Callable[[], Awaitable[LagReading | None]], handled: Callable[[], int]
    ) -> None:
        """Draw until the lag is 0 (then remove the bar); cancel to stop earlier."""
        with self._bar() as bar:
            await self.draw(bar, measure, handled)

    @staticmethod
    async def draw(
        bar: Bar,
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
            bar.update(completed=now - start, total=total, rate=f"{rate:,.0f}")
            tick += 1
            await anyio.sleep(REFRESH)
