"""The example's test setup, with projector's testing kit (its pytest plugin is loaded by
itself once projector is installed): each test gets a database with a message store,
projector's tables and the read model's table."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import schema


@pytest.fixture(scope="session")
def projector_schema() -> Callable[[str], None]:
    """The read model's table, created once in the database every test's is copied from."""
    return schema.create_tables


@pytest.fixture
def anyio_backend() -> str:
    """projector runs on asyncio (psycopg's async connections need it)."""
    return "asyncio"
