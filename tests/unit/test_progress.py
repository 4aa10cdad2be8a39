"""The catch-up progress bar's figures, with a scripted lag and no terminal."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from projector.telemetry import progress
from projector.telemetry.lag import CategoryLag, LagReading
from projector.telemetry.progress import CatchUpProgress

TOTAL = 1_000


@dataclass
class CatchUp:
    """A catch-up of TOTAL events with nothing written meanwhile: 40 handled between redraws,
    and 10 while each measurement runs."""

    handled: int = 0
    totals: list[int | None] = field(default_factory=list)

    async def measure(self) -> LagReading:
        unhandled = TOTAL - self.handled
        self.handled = min(TOTAL, self.handled + 10)
        lag = CategoryLag("account", 1, TOTAL, unhandled, 0.0, unhandled)
        return LagReading({"account": lag}, anyio.current_time(), 0.0)

    def count(self) -> int:
        return self.handled

    def update(self, *, completed: int, total: int | None, rate: str) -> None:
        self.totals.append(total)
        self.handled = min(TOTAL, self.handled + 40)


def test_the_total_stays_put_when_nothing_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "REFRESH", 0.001)
    monkeypatch.setattr(progress, "MEASURE_EVERY", 1)
    catch_up = CatchUp()

    async def draw() -> None:
        with anyio.fail_after(5):
            await CatchUpProgress.draw(catch_up, catch_up.measure, catch_up.count)

    anyio.run(draw)

    assert len(catch_up.totals) > 3
    assert set(catch_up.totals) == {TOTAL}
