"""How a translating connection names the driver's errors (`storage.database.translated`): a
lost session is DatabaseUnavailableError, lent or not; any other error is projector's own,
except on a lent connection, where it stays the user's (psycopg's)."""

from __future__ import annotations

import psycopg
import psycopg.errors
import pytest

from projector.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    PrivilegeError,
    ProjectorError,
    SchemaMissingError,
)
from projector.storage.database import refusal, translated

LOST = [
    psycopg.OperationalError("server closed the connection unexpectedly"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.ConnectionFailure("connection failure"),
]


@pytest.mark.parametrize("error", LOST, ids=repr)
@pytest.mark.parametrize("lent", [False, True])
def test_a_lost_session_is_unavailable_even_on_a_lent_connection(
    error: psycopg.Error, lent: bool
) -> None:
    assert isinstance(translated(error, lent=lent), DatabaseUnavailableError)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.errors.UndefinedTable("relation does not exist"), SchemaMissingError),
        (psycopg.errors.InsufficientPrivilege("permission denied"), PrivilegeError),
        (psycopg.errors.DeadlockDetected("deadlock detected"), DatabaseUnavailableError),
        (psycopg.errors.UniqueViolation("duplicate key"), DatabaseError),
        (psycopg.errors.DivisionByZero("division by zero"), DatabaseError),
    ],
    ids=repr,
)
def test_a_refused_statement_of_projectors_is_projectors_error(
    error: psycopg.Error, kind: type[ProjectorError]
) -> None:
    assert type(translated(error)) is kind


def test_a_refused_statement_on_a_lent_connection_stays_psycopgs() -> None:
    assert translated(psycopg.errors.UniqueViolation("duplicate key"), lent=True) is None


def test_an_error_that_broke_the_connection_is_unavailable_whatever_it_says() -> None:
    error = psycopg.errors.IdleInTransactionSessionTimeout("terminating connection")
    assert isinstance(translated(error, broken=True), DatabaseUnavailableError)


def test_a_refusal_is_found_raised_as_it_is_or_translated() -> None:
    driver = psycopg.errors.UniqueViolation("duplicate key")
    with pytest.raises(DatabaseError) as raised:
        raise DatabaseError("the database refused it") from driver
    assert refusal(raised.value, psycopg.errors.UniqueViolation) is driver
    assert refusal(driver, psycopg.errors.UniqueViolation) is driver
    assert refusal(driver, psycopg.errors.NotNullViolation) is None
