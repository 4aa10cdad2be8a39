"""What users write: a `Projection`, its handler, and the result a handler may return."""

from __future__ import annotations

import importlib
import inspect
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

from projector.errors import ConfigurationError, HandlerImportError
from projector.model.events import Event, validate_category, validate_group
from projector.model.failures import RetryPolicy
from projector.model.versions import version_group, version_schema

if TYPE_CHECKING:
    # Only a type: the model does no I/O; a transactional handler is given the connection.
    from psycopg import AsyncConnection

    Connection: TypeAlias = AsyncConnection[tuple[Any, ...]]
from projector.model.dependencies import Dependency, PauseCallback


@dataclass(frozen=True, slots=True)
class StreamResult:
    """How far a handler got with the events of one call; returning None means all of them.

    Use the constructors: `all_processed()`, `none_processed()`, `partially_processed(n)` and
    `skip_to(position)`. Events not processed are offered again in the stream's next call.
    """

    processed: int | None = None
    next_position: int | None = None

    @classmethod
    def all_processed(cls) -> StreamResult:
        return cls()

    @classmethod
    def none_processed(cls) -> StreamResult:
        """Handle nothing now: the same events (and any newer) come back after a short pause."""
        return cls(processed=0)

    @classmethod
    def partially_processed(cls, count: int) -> StreamResult:
        """The first ``count`` events were handled."""
        if count < 0:
            raise ValueError("partially_processed needs a count of 0 or more")
        return cls(processed=count)

    @classmethod
    def skip_to(cls, position: int) -> StreamResult:
        """Everything below stream ``position`` is handled, including events not yet read.

        For a handler that knows its stream's version (e.g. it wrote to it): later events
        below ``position`` are dropped instead of delivered.
        """
        return cls(next_position=position)

    def next_position_after(self, events: Sequence[Event]) -> int:
        """The stream position to expect next after a call that was given ``events``."""
        if self.next_position is not None:
            return self.next_position
        if self.processed is None or self.processed >= len(events):
            return events[-1].position + 1
        return events[self.processed].position


StreamHandler = Callable[[str, list[Event]], Awaitable[StreamResult | None]]
TransactionalHandler: TypeAlias = (
    "Callable[[str, list[Event], Connection], Awaitable[StreamResult | None]]"
)
EventHandler = Callable[[Event], Awaitable[None]]
Positions = Literal["projector", "read_model"]
"""Where a transactional batch projection keeps each stream's applied position."""
Spans: TypeAlias = dict[str, list[Event]]
"""Several streams' spans: each stream's events, in stream order, by stream name."""
BatchResults: TypeAlias = "dict[str, StreamResult] | None"
"""What a batch handler returns: None when it handled every span, else a `StreamResult` for
each stream that handled less (streams left out handled all of theirs)."""
BatchHandler: TypeAlias = "Callable[[Spans], Awaitable[BatchResults]]"
TransactionalBatchHandler: TypeAlias = "Callable[[Spans, Connection], Awaitable[BatchResults]]"
SetupHook: TypeAlias = "Callable[[Connection], Awaitable[None]]"
"""Creates a version's read-model tables, with unqualified names, in the version's schema."""
ResetStreamHook: TypeAlias = "Callable[[Connection, str], Awaitable[None]]"
"""Deletes what a transactional projection wrote for one stream, before `projector replay`
applies the stream's events again."""

_IDEMPOTENCY_NAMESPACE = uuid.UUID("3f7c2a61-8d0e-4b8e-9c43-5b1f2e6a9d70")


def idempotency_key(group: str, event: Event) -> str:
    """A key for a side effect of handling ``event`` in ``group``: the same every time the event
    is delivered again, different for another group or event. Pass it to external APIs that
    deduplicate (e.g. an Idempotency-Key header)."""
    return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{group}/{event.id}"))


class Projection:
    """A named set of handlers that keeps a read model up to date.

    ``retry`` sets how its failing streams are retried and what happens when retries run out
    (settings given by flag or environment win over it).

    ``depends_on`` names the groups it waits for: it handles an event only once each of them
    has handled every event before it in global order, and pauses while one is not running or
    (with ``max_lag``) too far behind; ``on_pause`` / ``on_resume`` are told why (see
    `dependencies`).

    Register either one stream handler, called with a stream's events in order::

        @projection.handler
        async def handle(stream_name: str, events: list[Event]) -> None: ...

    or one handler per event type (types with no handler are skipped)::

        @projection.on("Deposited")
        async def deposited(event: Event) -> None: ...

    or one of the transactional and batch handlers (`transactional`, `batch`,
    `transactional_batch`).

    ``version`` (1 by default) is bumped to rebuild the read model beside the live one (see
    `projector.model.versions`): each version has its own group (`group`) and, with a
    ``setup`` hook, its own schema (`schema`), where ``setup(conn)`` creates its tables and
    its transactional handlers write. ``reset_stream(conn, stream_name)`` deletes one
    stream's rows, for `projector replay` of a transactional projection.
    """

    def __init__(
        self,
        name: str,
        *,
        categories: Sequence[str] = (),
        handler: StreamHandler | None = None,
        retry: RetryPolicy | None = None,
        depends_on: Sequence[Dependency] = (),
        on_pause: PauseCallback | None = None,
        on_resume: PauseCallback | None = None,
        version: int = 1,
        setup: SetupHook | None = None,
        reset_stream: ResetStreamHook | None = None,
    ) -> None:
        self.name = validate_group(name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigurationError(
                f"projection {name!r}: version={version!r} must be a whole number, 1 or more"
            )
        self.version = version
        self.group = version_group(self.name, version)
        self.schema = None if setup is None else version_schema(self.name, version)
        self.setup = setup
        self.reset_stream = reset_stream
        for hook in (setup, reset_stream):
            if hook is not None:
                _require_coroutine(hook)
        self.retry = retry
        self.depends_on = _check_dependencies(self.name, depends_on)
        self.on_pause = _check_callback("on_pause", on_pause)
        self.on_resume = _check_callback("on_resume", on_resume)
        self.categories = tuple(validate_category(c) for c in categories)
        if handler is not None:
            _require_coroutine(handler)
        self._stream_handler = handler
        self._transactional_handler: TransactionalHandler | None = None
        self._batch_handler: BatchHandler | None = None
        self._transactional_batch_handler: TransactionalBatchHandler | None = None
        self.positions: Positions = "projector"
        self._event_handlers: dict[str, EventHandler] = {}

    def __repr__(self) -> str:
        version = "" if self.version == 1 else f", version={self.version}"
        return f"Projection({self.name!r}{version})"

    def handler(self, fn: StreamHandler) -> StreamHandler:
        """Register the stream handler (decorator)."""
        self._require_no_handler(fn)
        self._stream_handler = fn
        return fn

    def transactional(self, fn: TransactionalHandler) -> TransactionalHandler:
        """Register a stream handler that writes through the connection it is given, inside a
        transaction that also records the stream's position: each event is applied exactly
        once (decorator)."""
        self._require_no_handler(fn)
        self._transactional_handler = fn
        return fn

    def batch(self, fn: BatchHandler) -> BatchHandler:
        """Register a handler called with several streams' spans at once (``{stream_name:
        events}``), for writers that work in bulk; delivered at least once, like `handler`
        (decorator)."""
        self._require_no_handler(fn)
        self._batch_handler = fn
        return fn

    @overload
    def transactional_batch(self, fn: TransactionalBatchHandler) -> TransactionalBatchHandler: ...

    @overload
    def transactional_batch(
        self, *, positions: Positions
    ) -> Callable[[TransactionalBatchHandler], TransactionalBatchHandler]: ...

    def transactional_batch(
        self, fn: TransactionalBatchHandler | None = None, *, positions: Positions = "projector"
    ) -> (
        TransactionalBatchHandler
        | Callable[[TransactionalBatchHandler], TransactionalBatchHandler]
    ):
        """Register a batch handler that writes through the connection it is given, inside one
        transaction (decorator, with or without arguments). Each event is applied exactly once:

        - ``positions="projector"`` (the default): the transaction also records the position
          of every stream it was given in ``projector.stream_positions``, and events at or
          below it never reach the handler;
        - ``positions="read_model"``: the read model keeps each stream's position in its own
          row, and the handler's writes are guarded by it (`projector.GuardedUpsert` writes
          such a row): projector records nothing beside them, which saves a row per stream.
        """
        if positions not in ("projector", "read_model"):
            raise ConfigurationError(
                f"positions={positions!r}: give 'projector' (projector.stream_positions) or "
                "'read_model' (the read model's rows hold them)"
            )

        def register(fn: TransactionalBatchHandler) -> TransactionalBatchHandler:
            self._require_no_handler(fn)
            self._transactional_batch_handler = fn
            self.positions = positions
            return fn

        return register if fn is None else register(fn)

    @property
    def is_transactional(self) -> bool:
        """Whether its handler writes in projector's transaction (one stream's or a batch's)."""
        return (
            self._transactional_handler is not None
            or self._transactional_batch_handler is not None
        )

    @property
    def is_batch(self) -> bool:
        """Whether its handler takes several streams' spans at once."""
        return self._batch_handler is not None or self._transactional_batch_handler is not None

    def _has_handler(self) -> bool:
        return bool(
            self._stream_handler
            or self._transactional_handler
            or self._batch_handler
            or self._transactional_batch_handler
            or self._event_handlers
        )

    def _require_no_handler(self, fn: Callable[..., object]) -> None:
        _require_coroutine(fn)
        if self._has_handler():
            raise ConfigurationError(
                f"projection {self.name!r} already has handlers: register one kind of handler "
                "per projection (make another Projection for the other)"
            )

    def on(self, event_type: str) -> Callable[[EventHandler], EventHandler]:
        """Register a handler for one event type (decorator)."""

        def register(fn: EventHandler) -> EventHandler:
            _require_coroutine(fn)
            if self._has_handler() and not self._event_handlers:
                raise ConfigurationError(
                    f"projection {self.name!r} already has a stream handler (or a batch one): "
                    "per-type handlers go on a projection of their own"
                )
            if event_type in self._event_handlers:
                raise ConfigurationError(f"projection {self.name!r} already handles {event_type!r}")
            self._event_handlers[event_type] = fn
            return fn

        return register

    async def handle(self, stream_name: str, events: list[Event]) -> int:
        """Run the handler for one stream's events; return the stream position to expect next."""
        if self._stream_handler is not None:
            return _next_position(await self._stream_handler(stream_name, events), events)
        for event in events:
            typed = self._event_handlers.get(event.type)
            if typed is not None:
                await typed(event)
        return events[-1].position + 1

    async def handle_in_transaction(
        self, conn: Connection, stream_name: str, events: list[Event]
    ) -> int:
        """Run the transactional handler; return the stream position to expect next."""
        assert self._transactional_handler is not None
        return _next_position(await self._transactional_handler(stream_name, events, conn), events)

    async def handle_batch(self, spans: Spans) -> dict[str, int]:
        """Run the batch handler; return the position to expect next of each stream that did
        not handle all of its events (a stream left out did)."""
        assert self._batch_handler is not None
        return _next_positions(await self._batch_handler(spans), spans)

    async def handle_batch_in_transaction(self, conn: Connection, spans: Spans) -> dict[str, int]:
        """Run the transactional batch handler; return the position to expect next of each
        stream that did not handle all of its events (a stream left out did)."""
        assert self._transactional_batch_handler is not None
        return _next_positions(await self._transactional_batch_handler(spans, conn), spans)

    def check_ready(self) -> None:
        """Raise ConfigurationError unless a handler is registered."""
        if not self._has_handler():
            raise ConfigurationError(
                f"projection {self.name!r} has no handler: decorate an async function with "
                f"@{self.name}.handler or @{self.name}.on('EventType')"
            )


def _next_position(result: StreamResult | None, events: list[Event]) -> int:
    """The stream position to expect after a call that returned ``result``; None (the common
    case) is spelt out rather than made a StreamResult, which a catch-up would pay per call."""
    if result is None:
        return events[-1].position + 1
    return result.next_position_after(events)


def _next_positions(results: BatchResults, spans: Spans) -> dict[str, int]:
    """The position to expect next of each stream a batch call that returned ``results`` did
    not handle whole; nothing at all in the common case (None: every span handled), which a
    catch-up would otherwise pay for with a dict of every stream per call."""
    positions: dict[str, int] = {}
    for name, result in (results or {}).items():
        events = spans.get(name)
        if events is None:
            raise ValueError(
                f"the batch handler returned a result for {name!r}, a stream it was not given"
            )
        positions[name] = result.next_position_after(events)
    return positions


def _check_dependencies(name: str, depends_on: Sequence[Dependency]) -> tuple[Dependency, ...]:
    for dependency in depends_on:
        if not isinstance(dependency, Dependency):
            raise ConfigurationError(
                f"projection {name!r}: depends_on takes Dependency('group', max_lag=...) "
                f"values, not {dependency!r}"
            )
        if dependency.group == name:
            raise ConfigurationError(f"projection {name!r} cannot depend on its own group")
    return tuple(depends_on)


def _check_callback(what: str, fn: PauseCallback | None) -> PauseCallback | None:
    if fn is not None and inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"{what} {fn.__qualname__} must be a plain function, not async: it is called on "
            "the runner's event loop and must return quickly"
        )
    return fn


def _require_coroutine(fn: Callable[..., object]) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"handler {fn.__qualname__} must be an async function")


def load_projection(target: str) -> Projection:
    """Import ``MODULE:ATTR`` and return the Projection it names."""
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise HandlerImportError(f"{target!r} is not MODULE:ATTR (e.g. shop.projections:balances)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not _names_part_of(exc.name, module_name):
            raise _import_failed(module_name, exc) from exc
        raise HandlerImportError(
            f"cannot import module {module_name!r} from {target!r}: {exc} "
            "(is it installed, or on PYTHONPATH / in the current directory?)"
        ) from exc
    except Exception as exc:
        raise _import_failed(module_name, exc) from exc
    value = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise HandlerImportError(
                f"module {module_name!r} has no attribute {attr!r} (from {target!r})"
            ) from None
    if not isinstance(value, Projection):
        raise HandlerImportError(
            f"{target!r} is a {type(value).__name__}, not a projector.Projection"
        )
    value.check_ready()
    return value


def _names_part_of(missing: str, module_name: str) -> bool:
    """Whether the module found missing is ``module_name`` or a package above it (the user's
    target is not there), rather than something the target itself imports."""
    return module_name == missing or module_name.startswith(missing + ".")


def _import_failed(module_name: str, exc: BaseException) -> HandlerImportError:
    """The user's module raised as it was imported: their bug, so their traceback (without
    importlib's frames), under one line that says what happened."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if "importlib" not in frame.filename and frame.filename != __file__
    ]
    lines = traceback.format_list(frames) + traceback.format_exception_only(exc)
    return HandlerImportError(
        f"importing module {module_name!r} raised {type(exc).__name__}: {exc} "
        "(its traceback follows)\nTraceback (most recent call last):\n" + "".join(lines).rstrip()
    )
