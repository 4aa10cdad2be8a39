"""A runner needs only the privileges the README lists: a role with just those projects a
transactional projection (checkpoints, stream positions, held streams) to its tail."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
import pytest
from psycopg import sql

from tests.support.balances import balances_projection, projected_and_folded, write_transactions
from tests.support.projecting import run_projection, settings_for

# As README.md's "Privileges and connections" lists them, for a runner.
RUNNER_GRANTS = """
GRANT USAGE ON SCHEMA message_store TO {role};
GRANT SELECT ON message_store.messages TO {role};
GRANT USAGE ON SCHEMA projector TO {role};
GRANT SELECT, INSERT, UPDATE
    ON projector.checkpoints, projector.held_streams, projector.stream_positions TO {role};
GRANT DELETE ON projector.held_streams TO {role};
GRANT SELECT, INSERT, UPDATE ON balances TO {role};
"""
PASSWORD = "runner-password"


@pytest.fixture
def runner_url(database_url: str) -> Iterator[str]:
    """The URL of a role of the test's own that has only a runner's privileges."""
    role = f"runner_{uuid.uuid4().hex[:10]}"
    anyio.run(lambda: write_transactions(database_url, accounts=10, events=200, seed=3))
    identifier = sql.Identifier(role)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(identifier, sql.Literal(PASSWORD))
        )
        conn.execute(sql.SQL(RUNNER_GRANTS).format(role=identifier))
    parts = urlsplit(database_url)
    netloc = f"{role}:{PASSWORD}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    try:
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            conn.execute(sql.SQL("DROP OWNED BY {}").format(identifier))
            conn.execute(sql.SQL("DROP ROLE {}").format(identifier))


def test_a_role_with_only_a_runners_privileges_projects_to_the_tail(
    runner_url: str, database_url: str
) -> None:
    settings = settings_for(runner_url, categories=("account",))

    anyio.run(run_projection, balances_projection(), settings)

    projected, folded = projected_and_folded(database_url)
    assert projected == folded
    assert len(projected) == 10
