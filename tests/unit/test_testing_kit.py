"""The testing kit's parts that need no database: the event factory, the numbering
`call_handler` gives events, calling a handler alone, and snapshots of rows."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
import uuid
from datetime import datetime
from decimal import Decimal

import pytest

import projector.testing
from projector import ConfigurationError, Event, Projection, StreamResult
from projector.testing import UNWRITTEN, call_handler, event, snapshot
from projector.testing.events import placed

pytestmark = pytest.mark.anyio


def test_an_event_takes_its_data_from_keywords_and_has_no_position_until_written() -> None:
    made = event("Renamed", stream="account-1", data={"from": "a"}, to="b", metadata={"by": "me"})

    assert (made.type, made.stream_name, made.category) == ("Renamed", "account-1", "account")
    assert made.data == {"from": "a", "to": "b"}
    assert made.metadata == {"by": "me"}
    assert (made.position, made.global_position) == (UNWRITTEN, UNWRITTEN)
    assert isinstance(made.id, uuid.UUID)
    assert made.time.tzinfo is None  # UTC without a zone, as Message DB stores it


def test_events_are_numbered_as_the_store_would_carrying_on_after_positions_given() -> None:
    events = placed(
        [
            event("Opened", stream="account-1"),
            event("Opened", stream="account-2"),
            event("Deposited", stream="account-1", position=5, global_position=10),
            event("Deposited", stream="account-1"),
            event("Deposited", stream="account-2"),
        ]
    )

    assert [(e.stream_name, e.position, e.global_position) for e in events] == [
        ("account-1", 0, 1),
        ("account-2", 0, 2),
        ("account-1", 5, 10),
        ("account-1", 6, 11),
        ("account-2", 1, 12),
    ]


async def test_a_stream_handler_is_called_once_per_stream_with_its_events_in_order() -> None:
    calls: list[tuple[str, list[int]]] = []
    projection = Projection("calls")

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> StreamResult | None:
        calls.append((stream_name, [e.position for e in events]))
        return StreamResult.partially_processed(1) if stream_name == "account-2" else None

    positions = await call_handler(
        projection,
        [
            event("Deposited", stream="account-1", amount=1),
            event("Deposited", stream="account-2", amount=2),
            event("Deposited", stream="account-1", amount=3),
            event("Deposited", stream="account-2", amount=4),
        ],
    )

    assert calls == [("account-1", [0, 1]), ("account-2", [0, 1])]
    assert positions == {"account-1": 2, "account-2": 1}


async def test_per_type_and_batch_handlers_are_called_as_the_pipeline_calls_them() -> None:
    deposited: list[int] = []
    by_type = Projection("by_type")

    @by_type.on("Deposited")
    async def on_deposit(e: Event) -> None:
        deposited.append(e.data["amount"])

    batches: list[dict[str, list[int]]] = []
    bulk = Projection("bulk")

    @bulk.batch
    async def handle_batch(spans: dict[str, list[Event]]) -> None:
        batches.append({name: [e.position for e in span] for name, span in spans.items()})

    events = [
        event("Deposited", stream="account-1", amount=5),
        event("Withdrawn", stream="account-1", amount=2),
        event("Deposited", stream="account-2", amount=7),
    ]
    assert await call_handler(by_type, events) == {"account-1": 2, "account-2": 1}
    assert await call_handler(bulk, events) == {"account-1": 2, "account-2": 1}

    assert deposited == [5, 7]
    assert batches == [{"account-1": [0, 1], "account-2": [0]}]


async def test_a_transactional_handler_needs_a_connection() -> None:
    projection = Projection("exact")

    @projection.transactional
    async def apply(stream_name: str, events: list[Event], conn: object) -> None:
        raise AssertionError("not called without a connection")

    with pytest.raises(ConfigurationError, match=r"conn=\.\.\."):
        await call_handler(projection, [event("Deposited", stream="account-1")])


def test_a_snapshot_is_an_aligned_table_in_natural_order_whatever_the_rows_order() -> None:
    rows = [
        ("account-10", 10, None, {"b": 1, "a": [True]}),
        ("account-2", 2, Decimal("1.50"), {}),
        ("account-9", -1, Decimal("0"), None),
    ]

    table = snapshot(["account", "balance", "fee", "tags"], rows)

    assert table == snapshot(["account", "balance", "fee", "tags"], reversed(rows))
    assert table == (
        "account    | balance | fee  | tags\n"
        "account-2  | 2       | 1.50 | {}\n"
        "account-9  | -1      | 0    | null\n"
        "account-10 | 10      | null | {\"a\": [true], \"b\": 1}\n"
    )


def test_a_snapshot_shows_times_in_iso_format_and_says_when_there_are_no_rows() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5)

    assert snapshot(["at", "note"], [(at, "two\nlines")]) == (
        "at                  | note\n2026-01-02T03:04:05 | two\\nlines\n"
    )
    assert snapshot(["account"], []) == "account\n(no rows)\n"
    assert snapshot(["n"], [(10,), (None,), (9,)]) == "n\nnull\n9\n10\n"
    assert snapshot(["n"], [(2,), (1,)], sort=False) == "n\n2\n1\n"


def test_loading_the_plugin_imports_neither_the_runner_nor_alembic() -> None:
    """pytest loads the plugin in every run of a project that has projector installed: it
    costs what importing projector does, until a test asks for the kit."""
    heavy = ["alembic", "sqlalchemy", "projector.runner", "projector.testing.running"]
    code = f"import sys, projector.testing.plugin; print([m for m in {heavy} if m in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_every_name_the_kit_exports_is_the_one_its_module_defines() -> None:
    for module in ("database", "events", "failures", "properties", "running", "snapshots"):
        importlib.import_module(f"projector.testing.{module}")  # sets the package's attributes

    for name in projector.testing.__all__:
        assert not isinstance(getattr(projector.testing, name), types.ModuleType), name
