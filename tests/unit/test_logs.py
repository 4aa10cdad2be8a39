"""Log lines carry the stable ``action`` and structured fields, as text or as JSON."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

from projector.logs import JsonFormatter, TextFormatter


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


def test_every_action_projector_logs_is_named_in_the_readmes_logs_section() -> None:
    root = Path(__file__).resolve().parents[2]
    logged = {
        match
        for path in (root / "src" / "projector").rglob("*.py")
        for match in re.findall(r'"action": "([a-z_]+)"', path.read_text())
    }
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Logs") : readme.index("## Message stores")]

    assert logged, "no action found in the sources"
    assert sorted(a for a in logged if f"`{a}`" not in section) == []
