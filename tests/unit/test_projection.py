"""What users write against: Projection, its handlers, StreamResult, and load_projection."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from projector.errors import ConfigurationError, HandlerImportError, InvalidNameError
from projector.model.events import Event
from projector.model.projection import (
    Projection,
    Spans,
    StreamHandler,
    StreamResult,
    load_projection,
)

_EVENT_ID = "0b6f1c1e-3e9a-4a53-8f1e-5b8f8f2f6c11"
_global_positions = itertools.count(1)


def ev(position: int, type: str = "Deposited", stream: str = "account-1") -> Event:
    time = datetime(2024, 1, 1, tzinfo=UTC)
    return Event(next(_global_positions), position, time, stream, type, "{}", None, _EVENT_ID)


async def next_position(result: StreamResult | None, positions: list[int]) -> int:
    """What the sink is told after a stream handler returned ``result`` for ``positions``."""

    async def handle(stream_name: str, events: list[Event]) -> StreamResult | None:
        return result

    projection = Projection("balances", handler=handle)
    return await projection.handle("account-1", [ev(p) for p in positions])


# -- StreamResult ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (None, 7),
        (StreamResult.all_processed(), 7),
        (StreamResult.none_processed(), 3),
        (StreamResult.partially_processed(0), 3),
        (StreamResult.partially_processed(1), 5),
        (StreamResult.partially_processed(2), 6),
        (StreamResult.partially_processed(3), 7),
        (StreamResult.partially_processed(10), 7),
        (StreamResult.skip_to(100), 100),
    ],
    ids=["none", "all", "none-processed", "0", "1", "2", "3-of-3", "10-of-3", "skip-to"],
)
async def test_a_stream_result_tells_the_sink_the_position_to_expect_next(
    result: StreamResult | None, expected: int
) -> None:
    # Positions with a gap: a partial result points at the first unprocessed event's position,
    # not at the first position plus the count.
    assert await next_position(result, [3, 5, 6]) == expected


def test_a_negative_partial_count_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        StreamResult.partially_processed(-1)


@pytest.mark.anyio
async def test_the_stream_handler_gets_the_stream_name_and_its_events_in_order() -> None:
    seen: list[tuple[str, list[int]]] = []
    projection = Projection("balances")

    @projection.handler
    async def handle(stream_name: str, events: list[Event]) -> None:
        seen.append((stream_name, [e.position for e in events]))

    assert await projection.handle("account-1", [ev(0), ev(1)]) == 2
    assert seen == [("account-1", [0, 1])]


# -- per-type handlers -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_per_type_handlers_see_their_types_in_order_and_unknown_types_are_skipped() -> None:
    seen: list[tuple[str, int]] = []
    projection = Projection("balances")

    @projection.on("Deposited")
    async def deposited(event: Event) -> None:
        seen.append(("deposited", event.position))

    @projection.on("Withdrawn")
    async def withdrawn(event: Event) -> None:
        seen.append(("withdrawn", event.position))

    events = [ev(0, "Opened"), ev(1, "Deposited"), ev(2, "Withdrawn"), ev(3, "Deposited")]
    events.append(ev(4, "Closed"))
    assert await projection.handle("account-1", events) == 5
    assert seen == [("deposited", 1), ("withdrawn", 2), ("deposited", 3)]


@pytest.mark.anyio
async def test_a_span_of_only_unknown_types_is_handled_past() -> None:
    projection = Projection("balances")

    @projection.on("Deposited")
    async def deposited(event: Event) -> None:
        raise AssertionError("not a Deposited event")

    assert await projection.handle("account-1", [ev(7, "Opened"), ev(8, "Closed")]) == 9


# -- registration ----------------------------------------------------------------------------


def test_a_sync_stream_handler_is_refused() -> None:
    projection = Projection("balances")

    def handle(stream_name: str, events: list[Event]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"handle.* must be an async function"):
        projection.handler(handle)  # type: ignore[arg-type]


def test_a_sync_event_handler_is_refused() -> None:
    projection = Projection("balances")

    def deposited(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match=r"deposited must be an async function"):
        projection.on("Deposited")(deposited)  # type: ignore[arg-type]


def test_a_sync_stream_handler_given_to_the_constructor_is_refused() -> None:
    def handle(stream_name: str, events: list[Event]) -> None: ...

    with pytest.raises(ConfigurationError, match="must be an async function"):
        Projection("balances", handler=handle)  # type: ignore[arg-type]


def _async_stream_handler() -> StreamHandler:
    async def handle(stream_name: str, events: list[Event]) -> None: ...

    return handle


def test_a_stream_handler_after_per_type_handlers_is_refused() -> None:
    projection = Projection("balances")

    @projection.on("Deposited")
    async def deposited(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="'balances' already has handlers"):
        projection.handler(_async_stream_handler())


def test_a_per_type_handler_after_a_stream_handler_is_refused() -> None:
    projection = Projection("balances")
    projection.handler(_async_stream_handler())

    async def deposited(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="'balances' already has a stream handler"):
        projection.on("Deposited")(deposited)


def test_a_second_stream_handler_is_refused() -> None:
    projection = Projection("balances")
    projection.handler(_async_stream_handler())
    with pytest.raises(ConfigurationError, match="already has handlers"):
        projection.handler(_async_stream_handler())


def test_a_second_handler_for_one_event_type_is_refused() -> None:
    projection = Projection("balances")

    async def deposited(event: Event) -> None: ...

    projection.on("Deposited")(deposited)
    with pytest.raises(ConfigurationError, match="already handles 'Deposited'"):
        projection.on("Deposited")(deposited)


def test_a_sync_batch_handler_is_refused() -> None:
    projection = Projection("balances")

    def bulk(spans: Spans) -> None: ...

    with pytest.raises(ConfigurationError, match=r"bulk must be an async function"):
        projection.batch(bulk)  # type: ignore[arg-type]


def test_a_batch_handler_beside_any_other_handler_is_refused() -> None:
    projection = Projection("balances")

    @projection.batch
    async def bulk(spans: Spans) -> None: ...

    async def bulk_in_transaction(spans: Spans, conn: object) -> None: ...

    async def deposited(event: Event) -> None: ...

    with pytest.raises(ConfigurationError, match="'balances' already has handlers"):
        projection.transactional_batch(bulk_in_transaction)
    with pytest.raises(ConfigurationError, match="already has handlers"):
        projection.handler(_async_stream_handler())
    with pytest.raises(ConfigurationError, match="already has a stream handler"):
        projection.on("Deposited")(deposited)


@pytest.mark.anyio
async def test_a_batch_result_names_only_the_streams_that_handled_less() -> None:
    projection = Projection("balances")

    @projection.batch
    async def bulk(spans: Spans) -> dict[str, StreamResult]:
        return {
            "account-1": StreamResult.partially_processed(1),
            "account-2": StreamResult.none_processed(),
        }

    spans = {name: [ev(3, stream=name), ev(5, stream=name)] for name in ("account-1", "account-2")}
    spans["account-3"] = [ev(8, stream="account-3")]

    # account-3, left out, handled all of its events.
    assert await projection.handle_batch(spans) == {"account-1": 5, "account-2": 3}
    assert projection.is_batch
    assert not projection.is_transactional


@pytest.mark.anyio
async def test_a_batch_result_for_a_stream_not_given_fails_the_call() -> None:
    projection = Projection("balances")

    @projection.batch
    async def bulk(spans: Spans) -> dict[str, StreamResult]:
        return {"account-9": StreamResult.all_processed()}

    with pytest.raises(ValueError, match="'account-9', a stream it was not given"):
        await projection.handle_batch({"account-1": [ev(0)]})


def test_a_projection_name_or_category_the_store_cannot_hold_is_refused() -> None:
    with pytest.raises(InvalidNameError, match="group 'my-group'"):
        Projection("my-group")
    with pytest.raises(InvalidNameError, match="category 'account-1'"):
        Projection("balances", categories=["account", "account-1"])
    assert Projection("balances", categories=["account"]).categories == ("account",)


def test_a_projection_without_handler_is_not_ready() -> None:
    with pytest.raises(ConfigurationError, match="'balances' has no handler"):
        Projection("balances").check_ready()


# -- load_projection -------------------------------------------------------------------------

ModuleWriter = Callable[[str], str]


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleWriter]:
    """Writes a module of the given source on sys.path and returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_projections_{len(names)}_{tmp_path.name}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


_PROJECTIONS = """
    from projector import Event, Projection

    balances = Projection("balances", categories=["account"])

    @balances.handler
    async def handle(stream_name: str, events: list[Event]) -> None: ...

    class Namespace:
        nested = balances

    empty = Projection("empty")
    not_a_projection = 42
"""


def test_load_projection_returns_the_projection_a_module_names(user_module: ModuleWriter) -> None:
    name = user_module(_PROJECTIONS)
    loaded = load_projection(f"{name}:balances")
    assert loaded is sys.modules[name].balances
    assert loaded.categories == ("account",)
    assert load_projection(f"{name}:Namespace.nested") is loaded


@pytest.mark.parametrize("target", ["shop.projections", "shop.projections:", ":balances"])
def test_load_projection_needs_module_colon_attribute(target: str) -> None:
    with pytest.raises(HandlerImportError, match=re.escape(f"{target!r} is not MODULE:ATTR")):
        load_projection(target)


def test_load_projection_names_a_module_that_is_not_there() -> None:
    with pytest.raises(HandlerImportError, match="cannot import module 'no_such_module_here'"):
        load_projection("no_such_module_here:balances")


def test_load_projection_names_a_module_whose_own_import_fails(user_module: ModuleWriter) -> None:
    name = user_module("import a_dependency_that_is_not_installed\n")
    with pytest.raises(HandlerImportError) as raised:
        load_projection(f"{name}:balances")
    header, *traceback = str(raised.value).splitlines()
    assert header == (
        f"importing module {name!r} raised ModuleNotFoundError: No module named "
        "'a_dependency_that_is_not_installed' (its traceback follows)"
    )
    assert "    import a_dependency_that_is_not_installed" in traceback


def test_a_module_that_raises_on_import_gets_its_own_traceback_under_one_line(
    user_module: ModuleWriter,
) -> None:
    name = user_module("RATES = {}\nDEFAULT = RATES['EUR']\n")
    with pytest.raises(HandlerImportError) as raised:
        load_projection(f"{name}:balances")
    header, *traceback = str(raised.value).splitlines()
    assert header == f"importing module {name!r} raised KeyError: 'EUR' (its traceback follows)"
    assert traceback[0] == "Traceback (most recent call last):"
    assert "    DEFAULT = RATES['EUR']" in traceback
    assert traceback[-1] == "KeyError: 'EUR'"
    assert not any("importlib" in line for line in traceback)


def test_load_projection_names_a_missing_attribute(user_module: ModuleWriter) -> None:
    name = user_module(_PROJECTIONS)
    with pytest.raises(HandlerImportError, match=rf"{name!r} has no attribute 'balance'"):
        load_projection(f"{name}:balance")
    with pytest.raises(HandlerImportError, match=r"has no attribute 'Namespace.missing'"):
        load_projection(f"{name}:Namespace.missing")


def test_load_projection_refuses_an_attribute_that_is_not_a_projection(
    user_module: ModuleWriter,
) -> None:
    name = user_module(_PROJECTIONS)
    with pytest.raises(HandlerImportError, match=r"is a int, not a projector.Projection"):
        load_projection(f"{name}:not_a_projection")


def test_load_projection_refuses_a_projection_without_handler(user_module: ModuleWriter) -> None:
    name = user_module(_PROJECTIONS)
    with pytest.raises(ConfigurationError, match="'empty' has no handler"):
        load_projection(f"{name}:empty")
