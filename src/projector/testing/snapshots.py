"""A read model's rows as text that reads well and compares well in an assertion.

::

    account | balance
    1       | 8
    2       | null

One line per row under a header of the column names, the columns aligned; the rows sorted (a
query without ORDER BY returns them in no set order), so the same rows always give the same
text, and pytest shows a difference line by line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

SEPARATOR = " | "
_DIGITS = re.compile(r"(\d+)")
NO_ROWS = "(no rows)"


def snapshot(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, sort: bool = True) -> str:
    """``rows`` (tuples of values, in the order of ``columns``) as an aligned text table, one
    line each, ending with a newline; sorted unless ``sort`` is False (a query's own ORDER BY
    is then kept)."""
    rows = sorted(rows, key=_row_order) if sort else list(rows)
    lines = [[render(value) for value in row] for row in rows]
    table = [list(columns), *lines]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    text = [line.rstrip() for line in _aligned(table, widths)]
    if not lines:
        text.append(NO_ROWS)
    return "\n".join(text) + "\n"


def _aligned(table: list[list[str]], widths: list[int]) -> list[str]:
    return [
        SEPARATOR.join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        for line in table
    ]


def _row_order(row: Sequence[Any]) -> tuple[tuple[int, Any], ...]:
    """NULLs first, numbers by value, everything else by its text with the numbers in it by
    value (``account-2`` before ``account-10``)."""
    return tuple(_value_order(value) for value in row)


def _value_order(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, ())
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return (1, value)
    # Split on runs of digits: text at even places, numbers at odd ones, so like compares with
    # like.
    pieces = _DIGITS.split(render(value))
    return (2, tuple(int(piece) if i % 2 else piece for i, piece in enumerate(pieces)))


def render(value: Any) -> str:
    """One value as the table shows it: ``null`` for NULL, JSON for json(b) values (keys
    sorted), ISO 8601 for times, and numbers and text as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)
    if isinstance(value, bytes | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value).replace("\n", "\\n")
