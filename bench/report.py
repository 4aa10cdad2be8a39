"""The run's report: a table for people, then one JSON line per scenario for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bench.scenarios import Outcome

HEADER = (
    "scenario",
    "run",
    "events",
    "seconds",
    "events/s",
    "peak RSS MB",
    "CPU us/event",
    "ratio",
    "target",
    "met",
)


def table(outcomes: Sequence[Outcome]) -> str:
    rows: list[tuple[str, ...]] = [HEADER]
    for outcome in outcomes:
        rows.extend(_rows(outcome))
    lines = render(rows)
    for outcome in outcomes:
        lines.extend(f"note: {outcome.scenario.name}: {note}" for note in outcome.notes)
    return "\n".join(lines)


def render(rows: Sequence[tuple[str, ...]], *, left: int = 2) -> list[str]:
    """``rows`` (the first is the header) in aligned columns: the first ``left`` columns
    flush left, the figures flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.ljust(width) if column < left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def json_lines(outcomes: Sequence[Outcome], context: dict[str, Any]) -> str:
    return "\n".join(json.dumps({**outcome.as_json(), **context}) for outcome in outcomes)


def _rows(outcome: Outcome) -> list[tuple[str, ...]]:
    s, p = outcome.scenario, outcome.projector
    if s.projector.handler == "tail":
        tails: list[tuple[str, ...]] = [
            (s.name, "projector: " + _latency(p), *_figures(p), "", "", "")
        ]
        if outcome.baseline is not None:
            label = f"baseline: {s.baseline_label}: {_latency(outcome.baseline)}"
            tails.append(("", label, *_figures(outcome.baseline), "", "", ""))
        return tails
    ratio = _ratio(outcome.ratio)
    target = "" if s.target is None else f">= {s.target:g}x"
    if s.memory_limit_mb is not None:
        target += f", < {s.memory_limit_mb:g} MB"
    met = {None: "", True: "yes", False: "no"}[outcome.met]
    rows: list[tuple[str, ...]] = [(s.name, "projector", *_figures(p), ratio, target, met)]
    if outcome.baseline is not None:
        rows.append(("", "baseline: " + s.baseline_label, *_figures(outcome.baseline), "", "", ""))
    for label, figures in outcome.references.items():
        ratio = _ratio(outcome.ratio_of(label))
        rows.append(("", "reference: " + label, *_figures(figures), ratio, "", ""))
    return rows


def _ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}x"


def _latency(figures: dict[str, Any]) -> str:
    text = f"p50 {figures.get('p50_ms', '-')} ms, p99 {figures.get('p99_ms', '-')} ms"
    if "healthy_written" in figures:  # a failing-stream tail: its worst, and what it saw
        text += f", max {figures.get('max_ms', '-')} ms, {figures['healthy_written']:,} written"
    return text


def _figures(figures: dict[str, Any]) -> tuple[str, str, str, str, str]:
    cpu = figures.get("cpu_us_per_event")
    return (
        f"{figures['events']:,}",
        f"{figures['seconds']:.2f}",
        f"{figures['events_per_s']:,}",
        f"{figures['peak_rss_mb']:.0f}",
        "" if cpu is None else f"{cpu:.2f}",
    )
