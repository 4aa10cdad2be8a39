"""The database fixtures: each test gets a store of either flavour, or an empty database, alone."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from tests.support.postgres import PgServer

MESSAGE_STORE_PATH = "-c search_path=message_store,public"


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(url, autocommit=True, options=MESSAGE_STORE_PATH)


def _write(url: str, stream_name: str) -> int:
    with _connect(url) as conn:
        row = conn.execute(
            "SELECT write_message(%s, %s, 'Opened', %s::jsonb)",
            (str(uuid.uuid4()), stream_name, json.dumps({"amount": 1})),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _message_count(url: str) -> int:
    with _connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM message_store.messages").fetchone()
    assert row is not None
    return int(row[0])


def _exists(url: str, relation: str) -> bool:
    with _connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,)).fetchone()
    return row is not None and row[0] is True


def _database_exists(server: PgServer, url: str) -> bool:
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server.admin_url) as conn:
        query = "SELECT count(*) FROM pg_database WHERE datname = %s"
        return conn.execute(query, (dbname,)).fetchone() == (1,)


# Each run asserts it starts from an empty store, so whichever runs second proves that the
# first one's message did not reach it.
@pytest.mark.parametrize("run", [1, 2])
def test_each_test_starts_from_an_empty_store_of_its_own(database_url: str, run: int) -> None:
    assert _message_count(database_url) == 0
    assert _write(database_url, "account-1") == 0
    assert _message_count(database_url) == 1
    assert _exists(database_url, "projector.checkpoints")


def test_clones_are_separate_databases_dropped_at_exit(
    pg_server: PgServer, messagedb_template: str
) -> None:
    with (
        pg_server.database(template=messagedb_template) as first,
        pg_server.database(template=messagedb_template) as second,
    ):
        _write(first, "account-1")
        assert (_message_count(first), _message_count(second)) == (1, 0)
    assert not _database_exists(pg_server, first)
    assert not _database_exists(pg_server, second)


@pytest.mark.parametrize("store_kind", ["messagedb"], ids=["store=messagedb"], indirect=True)
def test_the_messagedb_flavour_is_eventides_message_db(database_url: str) -> None:
    stream_name = f"account-{uuid.uuid4()}"
    assert _write(database_url, stream_name) == 0
    assert _write(database_url, stream_name) == 1

    with _connect(database_url) as conn:
        version = conn.execute("SELECT message_store_version()").fetchone()
        role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'message_store'").fetchone()
        rows = conn.execute(
            "SELECT stream_name, position, data FROM get_category_messages('account', 1)"
        ).fetchall()

    assert version is not None
    assert str(version[0]).startswith("1.3.")
    assert role == (1,)
    assert rows == [(stream_name, 0, '{"amount": 1}'), (stream_name, 1, '{"amount": 1}')]


def test_own_store_url_has_the_message_store_functions_and_projectors_tables(
    own_store_url: str,
) -> None:
    assert _write(own_store_url, "account-1") == 0
    assert _exists(own_store_url, "message_store.messages")
    assert _exists(own_store_url, "projector.checkpoints")


def test_the_empty_database_has_nothing_installed(empty_database_url: str) -> None:
    assert not _exists(empty_database_url, "message_store.messages")
    assert not _exists(empty_database_url, "projector.checkpoints")
    with _connect(empty_database_url) as conn, pytest.raises(psycopg.errors.UndefinedFunction):
        conn.execute("SELECT write_message('1', 'account-1', 'Opened', '{}'::jsonb)")
