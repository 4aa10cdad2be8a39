"""What the CLI shows people: the status table, and durations as people read them.

Rendering with rich lives here (and in the progress bar), never in what a runner imports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from projector.admin.status import MemberStatus

if TYPE_CHECKING:
    from rich.table import Table


COLUMNS = (
    "group",
    "category",
    "checkpoint",
    "head",
    "lag (events)",
    "lag (time)",
    "last written",
    "retrying",
    "parked",
    "runner",
)
_NUMBERS = {"checkpoint", "head", "lag (events)", "retrying", "parked"}
_HELD = ("retrying", "parked")


def status_table(rows: list[MemberStatus], *, now: datetime | None = None) -> Table:
    """A table for people; ages are relative to ``now`` (default: this machine's clock). The
    ``retrying`` and ``parked`` columns appear when some member has failing streams, with a
    caption saying when the next attempt is due and how old the oldest parked one is, so that
    a table with nothing failing stays narrow."""
    # Imported here: only the status command renders, and a runner starts faster without rich.
    from rich.console import JustifyMethod
    from rich.table import Table
    from rich.text import Text

    now = now or datetime.now(UTC)
    failing = any(row.parked or row.retrying for row in rows)
    columns = [c for c in COLUMNS if failing or c not in _HELD]
    table = Table(box=None, pad_edge=False, caption=_caption(rows, now))
    for column in columns:
        justify: JustifyMethod = "right" if column in _NUMBERS else "left"
        # On a narrow terminal (80 columns is the default when piped), let the two-word
        # headers wrap rather than have rich cut names and figures short.
        table.add_column(column, justify=justify, no_wrap=" " not in column)
    for row in rows:
        *values, runner = [
            cell
            for column, cell in zip(COLUMNS, _cells(row, now), strict=True)
            if column in columns
        ]
        table.add_row(*values, Text(runner, style="green" if runner == "running" else "dim"))
    return table


def _caption(rows: list[MemberStatus], now: datetime) -> str | None:
    if not rows:
        return "no checkpoints yet: a runner writes its own as it goes"
    lines = [_retrying_line(rows, now), _parked_line(rows, now)]
    return "\n".join(line for line in lines if line) or None


def _retrying_line(rows: list[MemberStatus], now: datetime) -> str | None:
    due = [(row.next_attempt_at, row) for row in rows if row.next_attempt_at is not None]
    if not due:
        return None
    at, row = min(due, key=lambda found: found[0])
    count = sum(r.retrying for r in rows)
    wait = (at - now).total_seconds()
    when = "now" if wait <= 0 else f"in {human_duration(wait)}"
    return (
        f"{count} retrying stream(s), their events not handled until they succeed; the next "
        f"attempt {when} in {row.name}/{row.category}: `projector failing list --group {row.group}`"
    )


def _parked_line(rows: list[MemberStatus], now: datetime) -> str | None:
    oldest = [(row.oldest_parked_at, row) for row in rows if row.oldest_parked_at is not None]
    if not oldest:
        return None
    since, row = min(oldest, key=lambda found: found[0])
    count = sum(r.parked for r in rows)
    age = human_duration((now - since).total_seconds())
    return (
        f"{count} parked stream(s), their events not handled; the oldest failing since {age} "
        f"ago in {row.name}/{row.category}: `projector failing list --group {row.group}`"
    )


def _cells(row: MemberStatus, now: datetime) -> tuple[str, ...]:
    return (
        row.name,
        row.category,
        str(row.checkpoint),
        "-" if row.head is None else str(row.head),
        str(row.lag_events),
        "-" if row.lag_seconds is None else human_duration(row.lag_seconds),
        f"{human_duration((now - row.last_written).total_seconds())} ago",
        str(row.retrying),
        str(row.parked),
        "running" if row.running else "stopped",
    )


def human_duration(seconds: float) -> str:
    """A short duration: ``<1s``, ``42s``, ``3m12s``, ``2h05m``, ``3d04h``."""
    # A clock a little behind the server's would show a negative age; it is "just now".
    whole = int(max(seconds, 0.0))
    if whole < 1:
        return "<1s"
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
