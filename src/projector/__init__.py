"""projector: keeps read models up to date from a Message DB-style event store in Postgres."""

from projector.dependencies import Dependency
from projector.errors import (
    ConfigurationError,
    DatabaseUnavailableError,
    HandlerError,
    HandlerImportError,
    InvalidNameError,
    MessageStoreError,
    ProjectorError,
    SchemaMissingError,
    WrongExpectedVersionError,
)
from projector.events import Event
from projector.failures import OnExhausted, PoisonEvent, RetryAfter, RetryPolicy
from projector.projection import Projection, StreamResult
from projector.store import global_position_of, write_message
from projector.waiting import WaitTimeoutError, wait_for

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "Dependency",
    "Event",
    "HandlerError",
    "HandlerImportError",
    "InvalidNameError",
    "MessageStoreError",
    "OnExhausted",
    "PoisonEvent",
    "Projection",
    "ProjectorError",
    "RetryAfter",
    "RetryPolicy",
    "SchemaMissingError",
    "StreamResult",
    "WaitTimeoutError",
    "WrongExpectedVersionError",
    "global_position_of",
    "wait_for",
    "write_message",
]
