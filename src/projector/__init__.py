"""projector: keeps read models up to date from a Message DB-style event store in Postgres."""

from projector.admin.waiting import wait_for
from projector.errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    HandlerError,
    HandlerImportError,
    InvalidNameError,
    MessageStoreError,
    ParkedStreamsError,
    PrivilegeError,
    ProjectorError,
    SchemaMissingError,
    WaitTimeoutError,
    WrongExpectedVersionError,
)
from projector.model.dependencies import Dependency
from projector.model.events import Event
from projector.model.failures import OnExhausted, PoisonEvent, RetryAfter, RetryPolicy
from projector.model.projection import Projection, StreamResult, idempotency_key
from projector.model.versions import replaying
from projector.storage.database import connect_lent as connect
from projector.storage.message_store import global_position_of, write_message
from projector.storage.read_models import Column, GuardedUpsert

# The name on PyPI (`pip install messagedb-projector`): "projector" there is another project.
# The import name and the command stay `projector`.
DISTRIBUTION = "messagedb-projector"

__all__ = [
    "Column",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailableError",
    "Dependency",
    "Event",
    "GuardedUpsert",
    "HandlerError",
    "HandlerImportError",
    "InvalidNameError",
    "MessageStoreError",
    "OnExhausted",
    "ParkedStreamsError",
    "PoisonEvent",
    "PrivilegeError",
    "Projection",
    "ProjectorError",
    "RetryAfter",
    "RetryPolicy",
    "SchemaMissingError",
    "StreamResult",
    "WaitTimeoutError",
    "WrongExpectedVersionError",
    "connect",
    "global_position_of",
    "idempotency_key",
    "replaying",
    "wait_for",
    "write_message",
]
