"""projector's exceptions: one root, each subclass a thing a user can cause and fix."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class ProjectorError(Exception):
    """projector stopped because of a problem it can explain; the message says what to change."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or type(self).__name__)


class ConfigurationError(ProjectorError):
    """A setting is missing or out of range; fix the flag, the PROJECTOR_* variable or .env."""


class InvalidNameError(ConfigurationError):
    """A category or group name is empty or has characters the message store does not allow."""


class HandlerImportError(ConfigurationError):
    """The MODULE:ATTR given to `projector run` does not name a Projection."""


class DatabaseUnavailableError(ProjectorError):
    """The database cannot be reached; check the URL, the server and the network."""


class DatabaseLoginError(DatabaseUnavailableError):
    """The database URL cannot work as given: its host name is unknown, or the server refuses
    its role, password or database name. Waiting would not help; fix the URL."""


class SchemaMissingError(ProjectorError):
    """A table or function projector needs is not in the database; the message names the command."""


class PrivilegeError(ProjectorError):
    """The database refused projector for want of a privilege; the docs list what is needed
    (Operating, Privileges and connections)."""


class DatabaseError(ProjectorError):
    """The database refused a statement of projector's."""


class MessageStoreError(ProjectorError):
    """The message store refused a read or a write."""


class WrongExpectedVersionError(MessageStoreError):
    """A write expected a stream version the stream is not at."""


class ParkedStreamsError(ProjectorError):
    """What was asked for is done, except for streams that are parked: their events are not
    handled until `projector failing retry`."""


class RebuildRefusedError(ProjectorError):
    """A rebuild command refused, given the state the projection's versions are in (a version
    lagging, a failed verify, nothing to roll back to, the live version); the message says
    what to do first."""


class HandlerError(ProjectorError):
    """A projection handler raised; the message names the stream and the event."""


class GroupSizeMismatchError(ConfigurationError):
    """A member was started with a group size other than its group's checkpoints were written
    with."""

class BucketCountMismatchError(ConfigurationError):
    """An elastic member was started with another bucket count than its group's."""

class PastTheHeadError(ConfigurationError):
    """A checkpoint was asked for past the category's head: every event written until the store
    reaches it would be skipped."""

class MemberBusyError(ProjectorError):
    """The group member is already running in another process."""

class LeaseLostError(ProjectorError):
    """The session holding this member's lock ended: the runner's tenure is over."""

class PositionMovedError(ProjectorError):
    """A transactional call found its stream's recorded position moved by someone else; its
    writes were rolled back."""

class ViewsBusyError(ProjectorError):
    """A view swap waited too long for a reader's lock, and changed nothing."""

class WaitTimeoutError(ProjectorError):
    """The group did not handle the position in time."""


class NoTestServerError(ProjectorError):
    """Something the tests need (a PostgreSQL server, a tool, a download) cannot be had here;
    the message says what to install or set (e.g. PROJECTOR_TEST_DATABASE_URL)."""


def find_error(exc: BaseException, kind: type[E]) -> E | None:
    """``exc`` if it is a ``kind``, else the first ``kind`` inside it when it is a task group's
    exception group (however deeply nested); None when there is none."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_error(inner, kind)
            if found is not None:
                return found
    return None
