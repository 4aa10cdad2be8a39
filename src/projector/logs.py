"""Log output: records carry a stable ``action`` and structured fields in ``extra``.

The human format appends those fields as ``key=value`` after the message, so an operator can
grep for ``action=checkpoint_committed`` and a machine can parse the same line.
"""

from __future__ import annotations

import logging
import sys

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def structured_fields(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra`` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = structured_fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def configure(level: str) -> None:
    """Send projector's logs to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg's pool logs every reconnect attempt at INFO; ours are enough.
    logging.getLogger("psycopg.pool").setLevel(max(logging.WARNING, root.level))
