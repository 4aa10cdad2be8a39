"""projector's pytest plugin (entry point ``pytest11``, name ``projector``): a database of its own
for each test, with a message store and projector's tables.

- ``projector_db``: a `Database` (its ``url``, ``write``, ``snapshot``, ...), new for each test;
- ``projector_database_url``: the same database's URL (override it to test elsewhere);
- ``projector_schema``: override it (session scope) to create your read models' tables once,
  in the template every test's database is copied from: return a function of the URL;
- ``projector_server``, ``projector_templates`` (session scope), ``projector_template``: the
  server, its template databases, and the name of the one the test's database is copied from.

The fixtures start nothing until a test asks for one. A missing server skips the test, and
fails it under ``CI=true`` (a broken setup there, not a reason to pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import NoReturn

import pytest

from projector.errors import NoTestServerError
from projector.testing.database import Database
from projector.testing.server import PgServer, Schema, Templates, open_server


def give_up(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI, where a missing server or tool is a broken setup."""
    if os.environ.get("CI", "").lower() in {"true", "1"}:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def projector_server() -> Iterator[PgServer]:
    """The session's server: PROJECTOR_TEST_DATABASE_URL, Docker, or a throwaway cluster."""
    with ExitStack() as stack:
        try:
            server = open_server(stack)
        except NoTestServerError as exc:
            give_up(str(exc))
        yield server


@pytest.fixture(scope="session")
def projector_schema() -> Schema | None:
    """Nothing: override it to create your read models' tables in the template."""
    return None


@pytest.fixture(scope="session")
def projector_templates(projector_server: PgServer) -> Iterator[Templates]:
    """The session's template databases, one per ``projector_schema`` in use, each built once."""
    with ExitStack() as stack:
        yield Templates(projector_server, stack)


@pytest.fixture
def projector_template(projector_templates: Templates, projector_schema: Schema | None) -> str:
    """The template of the test's ``projector_schema`` (a folder's conftest may have its own)."""
    return projector_templates.of(projector_schema)


@pytest.fixture
def projector_database_url(projector_server: PgServer, projector_template: str) -> Iterator[str]:
    """A database of the test's own, copied from the template; dropped after the test."""
    with projector_server.database(template=projector_template) as url:
        yield url


@pytest.fixture
def projector_db(projector_database_url: str) -> Database:
    """The test's database, to write events to and read its read models from."""
    return Database(projector_database_url)
