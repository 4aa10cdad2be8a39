"""Log lines carry the stable ``action`` and structured fields, as text or as JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from projector.telemetry import logs
from projector.telemetry.logs import JsonFormatter, TextFormatter


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("projector.test")
    return logger.makeRecord(
        "projector.test",
        logging.INFO,
        __file__,
        1,
        "checkpoint %s committed at %d",
        ("balances", 42),
        None,
        extra=extra,
    )


def test_text_lines_end_with_the_structured_fields_as_key_value_pairs() -> None:
    line = TextFormatter().format(_record(action="checkpoint_committed", position=42))

    assert "checkpoint balances committed at 42" in line
    assert line.endswith("action=checkpoint_committed position=42")


def test_json_lines_are_one_object_with_message_level_and_fields() -> None:
    line = JsonFormatter().format(_record(action="checkpoint_committed", position=42))

    entry = json.loads(line)
    assert entry["message"] == "checkpoint balances committed at 42"
    assert entry["level"] == "INFO"
    assert entry["action"] == "checkpoint_committed"
    assert entry["position"] == 42
    assert "\n" not in line


def test_json_lines_carry_the_traceback_of_an_error() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("t").makeRecord(
            "t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )

    entry = json.loads(JsonFormatter().format(record))

    assert "ValueError: boom" in entry["traceback"]


def test_every_action_projector_logs_is_named_in_the_docs_logs_section() -> None:
    root = Path(__file__).resolve().parents[2]
    logged = {
        match
        for path in (root / "src" / "projector").rglob("*.py")
        for match in re.findall(r'"action": "([a-z_]+)"', path.read_text())
    }
    page = (root / "docs" / "observability.md").read_text()
    section = page[page.index("## Logs") : page.index("## Metrics and health")]

    assert logged, "no action found in the sources"
    assert sorted(a for a in logged if f"`{a}`" not in section) == []


def test_psycopgs_own_warnings_are_left_to_debugging() -> None:
    logs.configure("INFO")
    quiet = {name: logging.getLogger(name).level for name in ("psycopg", "psycopg.pool")}
    logs.configure("DEBUG")
    debugging = {name: logging.getLogger(name).level for name in ("psycopg", "psycopg.pool")}
    logs.configure("WARNING")

    assert quiet == {"psycopg": logging.ERROR, "psycopg.pool": logging.ERROR}
    assert debugging == {"psycopg": logging.DEBUG, "psycopg.pool": logging.DEBUG}


def test_the_error_a_command_ends_with_is_json_too_under_json_logs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    logs.report_error("cannot connect to the database u@h:5432/db: refused")
    logs.configure("INFO", "text")
    logs.report_error("plain")

    json_line, text_line = capsys.readouterr().err.splitlines()
    entry = json.loads(json_line)
    assert (entry["level"], entry["action"]) == ("ERROR", "error")
    assert entry["message"] == "cannot connect to the database u@h:5432/db: refused"
    assert text_line == "error: plain"
