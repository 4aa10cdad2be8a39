"""Log output: records carry a stable ``action`` and structured fields in ``extra``.

The text format appends those fields as ``key=value`` after the message, so an operator can
grep for ``action=checkpoint_committed``; the JSON format (``--log-format json``) puts them
beside the message as keys of one object per line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the structured fields, and the
    traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **structured_fields(record),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at each record, so that while a progress bar is
    drawn (rich swaps in a proxy) log lines appear above it rather than through it."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        """StreamHandler sets its stream; the current sys.stderr is always used instead."""


_json_lines = False  # whether `configure` was asked for JSON lines


def report_errors_as(log_format: str) -> None:
    """Print the error that ends a command as ``log_format`` asks, before logging is
    configured (a bad setting ends a command before it gets that far)."""
    global _json_lines
    _json_lines = log_format == "json"


def configure(level: str, log_format: str = "text") -> None:
    """Send projector's logs to stderr at ``level``, as text lines or JSON lines."""
    report_errors_as(log_format)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if _json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # psycopg's own warnings (each failed reconnect of the pool, several lines each; queries
    # cancelled as a run stops) are what projector's records say once (`reconnecting`,
    # `stopping`): shown only when debugging.
    quiet = logging.DEBUG if root.level <= logging.DEBUG else logging.ERROR
    for name in ("psycopg", "psycopg.pool"):
        logging.getLogger(name).setLevel(quiet)
    # Alembic's "Context impl PostgresqlImpl" and "Will assume transactional DDL" lines at
    # every migrate and demo: `projector migrate` prints what it applied itself.
    logging.getLogger("alembic").setLevel(
        logging.DEBUG if root.level <= logging.DEBUG else logging.WARNING
    )


def report_error(message: str) -> None:
    """The error that ends a command, on stderr: ``error: ...``, or with JSON lines a JSON
    object (action ``error``) like every other line."""
    if not _json_lines:
        print(f"error: {message}", file=sys.stderr)
        return
    record = logging.makeLogRecord(
        {"name": "projector", "levelno": logging.ERROR, "levelname": "ERROR", "msg": message}
    )
    record.action = "error"
    print(JsonFormatter().format(record), file=sys.stderr)
