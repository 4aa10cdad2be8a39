"""The message store's interface: projector's own store and Eventide's Message DB, side by side.

Tests taking ``database_url`` run once per store flavour, so they assert only what the two stores
share: that is the promise that projector, and writers built for Message DB, work unchanged on
either. Tests taking ``own_store_url`` or ``empty_database_url`` are about projector's own store.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from projector.model import events
from projector.storage import migrate
from tests.support.postgres import PgServer

Connection = psycopg.Connection[tuple[Any, ...]]

# Message DB's functions find each other through the search_path; its own role gets this for free.
MESSAGE_STORE_PATH = "-c search_path=message_store,public"
MESSAGE_COLUMNS = [
    "id",
    "stream_name",
    "type",
    "position",
    "global_position",
    "data",
    "metadata",
    "time",
]
INTERFACE = [
    "acquire_lock",
    "cardinal_id",
    "category",
    "get_category_messages",
    "get_last_stream_message",
    "get_stream_messages",
    "hash_64",
    "id",
    "is_category",
    "message_store_version",
    "stream_version",
    "write_message",
]
BLOCKED_WRITE_TIMEOUT = "200ms"


def _connect(url: str, options: str = MESSAGE_STORE_PATH) -> Connection:
    return psycopg.connect(url, autocommit=True, options=options)


def _write(
    conn: Connection,
    stream_name: str,
    *,
    type_: str = "Deposited",
    data: object = None,
    metadata: object = None,
    expected_version: int | None = None,
    message_id: str | None = None,
) -> int:
    row = conn.execute(
        "SELECT write_message(%s, %s, %s, %s::jsonb, %s::jsonb, %s)",
        (
            message_id or str(uuid.uuid4()),
            stream_name,
            type_,
            json.dumps({} if data is None else data),
            None if metadata is None else json.dumps(metadata),
            expected_version,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _write_each_once(conn: Connection, stream_names: Sequence[str]) -> None:
    with conn.transaction(), conn.cursor() as cursor:
        cursor.executemany(
            "SELECT write_message(%s, %s, 'Opened', '{}'::jsonb)",
            [(str(uuid.uuid4()), name) for name in stream_names],
        )


def _category_rows(conn: Connection, *args: object, **named: object) -> list[tuple[Any, ...]]:
    """get_category_messages(*args, name => value, ...)."""
    arguments = ["%s"] * len(args) + [f"{name} => %s" for name in named]
    query = f"SELECT * FROM get_category_messages({', '.join(arguments)})"
    return conn.execute(query, [*args, *named.values()]).fetchall()


def _global_positions(rows: Sequence[tuple[Any, ...]]) -> list[int]:
    return [row[MESSAGE_COLUMNS.index("global_position")] for row in rows]


def _stream_names(rows: Sequence[tuple[Any, ...]]) -> set[str]:
    return {row[MESSAGE_COLUMNS.index("stream_name")] for row in rows}


def _sample_stream_names(count: int) -> list[str]:
    """Stream names of category ``account`` of every shape the stream-name rules distinguish."""
    rng = random.Random(20240917)
    names = [
        "account",  # the category's own stream: no id, so in no consumer-group member
        "account-",
        "account-+",
        "account-+tail",
        "account-a-b-c",
        "account-7+x-y",
        "account-café",
        "account-日本+1",
    ]
    for i in range(count - len(names)):
        shape = i % 4
        if shape == 0:
            names.append(f"account-{i}")
        elif shape == 1:
            names.append(f"account-{uuid.UUID(int=rng.getrandbits(128))}")
        else:
            # Compound ids; several share a cardinal id and so must share a member.
            cardinal = rng.randrange(count // 8)
            names.append(f"account-{cardinal}+{rng.choice(string.ascii_lowercase)}")
    return list(dict.fromkeys(names))


def _random_text(rng: random.Random) -> str:
    alphabet = string.printable + "éüßø日本語🙂-+"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))


def test_write_message_returns_the_stream_positions_from_zero(database_url: str) -> None:
    with _connect(database_url) as conn:
        positions = [_write(conn, "account-1") for _ in range(3)]
        other = _write(conn, "account-2")
        version = conn.execute("SELECT stream_version('account-1')").fetchone()
        missing = conn.execute("SELECT stream_version('account-9')").fetchone()

    assert positions == [0, 1, 2]
    assert other == 0
    assert version == (2,)
    assert missing == (None,)


def test_a_wrong_expected_version_is_refused_and_writes_nothing(database_url: str) -> None:
    with _connect(database_url) as conn:
        _write(conn, "account-1")
        _write(conn, "account-1")
        with pytest.raises(pg_errors.RaiseException, match="Wrong expected version"):
            _write(conn, "account-1", expected_version=0)
        with pytest.raises(pg_errors.RaiseException, match="Wrong expected version"):
            _write(conn, "account-1", expected_version=5)
        written = _write(conn, "account-1", expected_version=1)
        count = conn.execute("SELECT count(*) FROM message_store.messages").fetchone()

    assert written == 2
    assert count == (3,)


def test_expected_version_minus_one_means_the_stream_must_not_exist(database_url: str) -> None:
    with _connect(database_url) as conn:
        first = _write(conn, "account-1", expected_version=-1)
        with pytest.raises(pg_errors.RaiseException, match="Wrong expected version"):
            _write(conn, "account-1", expected_version=-1)

    assert first == 0


def test_a_message_id_is_unique_across_the_store(database_url: str) -> None:
    message_id = str(uuid.uuid4())
    with _connect(database_url) as conn:
        _write(conn, "account-1", message_id=message_id)
        with pytest.raises(pg_errors.UniqueViolation):
            _write(conn, "account-2", message_id=message_id)


def test_category_reads_are_in_global_order_from_position_and_at_most_a_batch(
    database_url: str,
) -> None:
    with _connect(database_url) as conn:
        for i in range(12):
            _write(conn, f"account-{i % 3}")
            _write(conn, f"accounting-{i}")  # a category with account as a prefix
            _write(conn, f"other-{i % 2}")
        everything = _category_rows(conn, "account", 1, -1)
        start = _global_positions(everything)[4]
        batch = _category_rows(conn, "account", start, 5)
        default_batch = conn.execute("SELECT * FROM get_category_messages('account')").fetchall()
        after_the_end = _category_rows(conn, "account", _global_positions(everything)[-1] + 1)

    positions = _global_positions(everything)
    assert len(everything) == 12
    assert positions == sorted(positions)
    assert _stream_names(everything) == {"account-0", "account-1", "account-2"}
    assert _global_positions(batch) == positions[4:9]
    assert default_batch == everything
    assert after_the_end == []


def test_rows_have_message_dbs_columns_with_json_as_text(database_url: str) -> None:
    message_id = str(uuid.uuid4())
    data = {"amount": 10, "note": "é"}
    metadata = {"correlationStreamName": "transfer-1", "causationMessagePosition": 3}
    with _connect(database_url) as conn:
        _write(conn, "account-1", data=data, metadata=metadata, message_id=message_id)
        _write(conn, "account-1")
        cursor = conn.execute("SELECT * FROM get_stream_messages('account-1')")
        rows = cursor.fetchall()
        columns = [column.name for column in cursor.description or []]

    first, second = (dict(zip(columns, row, strict=True)) for row in rows)
    assert columns == MESSAGE_COLUMNS
    assert (first["id"], first["stream_name"]) == (message_id, "account-1")
    assert first["type"] == "Deposited"
    assert (first["position"], second["position"]) == (0, 1)
    assert isinstance(first["data"], str)
    assert isinstance(first["metadata"], str)
    assert json.loads(first["data"]) == data
    assert json.loads(first["metadata"]) == metadata
    assert second["metadata"] is None
    assert first["time"].tzinfo is None  # timestamp without time zone, written in UTC


def test_stream_reads_start_at_a_position_and_honour_the_batch_size(database_url: str) -> None:
    with _connect(database_url) as conn:
        for _ in range(5):
            _write(conn, "account-1")
            _write(conn, "account-2")
        everything = conn.execute("SELECT position FROM get_stream_messages('account-1')")
        some = conn.execute("SELECT position FROM get_stream_messages('account-1', 2, 2)")
        unlimited = conn.execute("SELECT position FROM get_stream_messages('account-1', 1, -1)")
        missing = conn.execute("SELECT * FROM get_stream_messages('account-9')").fetchall()

        assert [row[0] for row in everything] == [0, 1, 2, 3, 4]
        assert [row[0] for row in some] == [2, 3]
        assert [row[0] for row in unlimited] == [1, 2, 3, 4]
        assert missing == []


def test_the_last_stream_message_can_be_asked_for_by_type(database_url: str) -> None:
    with _connect(database_url) as conn:
        _write(conn, "account-1", type_="Opened")
        _write(conn, "account-1", type_="Deposited")
        _write(conn, "account-1", type_="Withdrawn")
        last = conn.execute("SELECT type, position FROM get_last_stream_message('account-1')")
        opened = conn.execute(
            "SELECT type, position FROM get_last_stream_message('account-1', 'Opened')"
        )
        none = conn.execute("SELECT * FROM get_last_stream_message('account-9')").fetchall()

        assert last.fetchall() == [("Withdrawn", 2)]
        assert opened.fetchall() == [("Opened", 0)]
        assert none == []


def test_consumer_group_members_partition_streams_as_projector_does(database_url: str) -> None:
    names = _sample_stream_names(3000)
    with _connect(database_url) as conn:
        _write_each_once(conn, names)
        for size in (1, 2, 3, 7):
            members = [
                _stream_names(_category_rows(conn, "account", 1, -1, None, member, size))
                for member in range(size)
            ]
            expected = [
                {name for name in names if events.consumer_group_member(name, size) == member}
                for member in range(size)
            ]
            assert members == expected
            assert "account" not in set().union(*members)
            assert sum(map(len, members)) == len(names) - 1


def test_a_correlation_reads_only_messages_correlated_with_that_category(
    database_url: str,
) -> None:
    with _connect(database_url) as conn:
        _write(conn, "account-1", metadata={"correlationStreamName": "transfer-1"})
        _write(conn, "account-2", metadata={"correlationStreamName": "transfer-2+x"})
        _write(conn, "account-3", metadata={"correlationStreamName": "transferal-1"})
        _write(conn, "account-4", metadata={"other": 1})
        _write(conn, "account-5")
        correlated = _category_rows(conn, "account", correlation="transfer")

    assert _stream_names(correlated) == {"account-1", "account-2"}


@pytest.mark.parametrize(
    "arguments",
    [
        {"consumer_group_member": 0},
        {"consumer_group_size": 2},
        {"consumer_group_member": 2, "consumer_group_size": 2},
        {"consumer_group_member": -1, "consumer_group_size": 2},
        {"consumer_group_member": 0, "consumer_group_size": 0},
        {"correlation": "transfer-1"},
        {"condition": "position >= 0"},
    ],
    ids=repr,
)
def test_inconsistent_category_read_arguments_are_refused(
    database_url: str, arguments: dict[str, object]
) -> None:
    with _connect(database_url) as conn:
        _write(conn, "account-1")
        with pytest.raises(pg_errors.RaiseException):
            _category_rows(conn, "account", **arguments)


def test_categories_and_stream_names_are_not_interchangeable(database_url: str) -> None:
    with _connect(database_url) as conn:
        _write(conn, "account-1")
        with pytest.raises(pg_errors.RaiseException):
            conn.execute("SELECT * FROM get_category_messages('account-1')")
        with pytest.raises(pg_errors.RaiseException):
            conn.execute("SELECT * FROM get_stream_messages('account')")


def test_hash_64_agrees_with_projector_for_many_values(database_url: str) -> None:
    rng = random.Random(64)
    values = ["", "-", "+", "123", "account-1", *(_random_text(rng) for _ in range(4000))]
    with _connect(database_url) as conn:
        rows = conn.execute(
            "SELECT v, hash_64(v::varchar) FROM unnest(%s::text[]) AS v", (values,)
        ).fetchall()

    assert dict(rows) == {value: events.hash_64(value) for value in values}


def test_stream_name_functions_agree_with_projector(database_url: str) -> None:
    rng = random.Random(7)
    names = [
        *_sample_stream_names(200),
        "",
        "-",
        "--",
        "-1",
        "+",
        "a+b-c+d",
        "account:command-1+2+3",
        *(_random_text(rng) for _ in range(1000)),
    ]
    with _connect(database_url) as conn:
        rows = conn.execute(
            "SELECT n, category(n::varchar), id(n::varchar), cardinal_id(n::varchar),"
            " is_category(n::varchar) FROM unnest(%s::text[]) AS n",
            (names,),
        ).fetchall()

    expected = [
        (
            name,
            events.category(name),
            events.stream_id(name),
            events.cardinal_id(name),
            "-" not in name,
        )
        for name in names
    ]
    assert rows == expected


def test_writers_to_a_category_wait_for_each_other_and_no_one_else(database_url: str) -> None:
    with _connect(database_url) as holder, _connect(database_url) as other:
        with holder.transaction():
            _write(holder, "account-1")
            other.execute(f"SET lock_timeout = '{BLOCKED_WRITE_TIMEOUT}'")
            with pytest.raises(pg_errors.LockNotAvailable):
                _write(other, "account-2")
            assert _write(other, "invoice-1") == 0
        key = other.execute("SELECT acquire_lock('account-2'), hash_64('account')").fetchone()
        assert _write(other, "account-2") == 0

    assert key is not None
    assert key[0] == key[1] == events.hash_64("account")


# projector's own store only.


def test_own_store_functions_work_without_message_store_on_the_search_path(
    own_store_url: str,
) -> None:
    with _connect(own_store_url, options="-c search_path=public") as conn:
        written = conn.execute(
            "SELECT message_store.write_message(%s, 'account-1+x', 'Opened', '{}'::jsonb,"
            " %s::jsonb, -1)",
            (str(uuid.uuid4()), json.dumps({"correlationStreamName": "transfer-1"})),
        ).fetchone()
        member = events.consumer_group_member("account-1+x", 3)
        rows = {
            "category": conn.execute(
                "SELECT stream_name FROM message_store.get_category_messages("
                "'account', 1, 10, 'transfer', %s, 3)",
                (member,),
            ).fetchall(),
            "stream": conn.execute(
                "SELECT stream_name FROM message_store.get_stream_messages('account-1+x')"
            ).fetchall(),
            "last": conn.execute(
                "SELECT stream_name FROM message_store.get_last_stream_message('account-1+x')"
            ).fetchall(),
        }
        scalars = conn.execute(
            "SELECT message_store.stream_version('account-1+x'),"
            " message_store.acquire_lock('account-1+x'),"
            " message_store.cardinal_id('account-1+x'),"
            " message_store.is_category('account'),"
            " message_store.message_store_version()"
        ).fetchone()

    assert written == (0,)
    assert rows == {name: [("account-1+x",)] for name in ("category", "stream", "last")}
    assert scalars == (0, events.hash_64("account"), "1", True, "1.3.0-projector")


def test_own_store_installs_once_and_its_script_can_run_again(empty_database_url: str) -> None:
    assert migrate.install_message_store(empty_database_url) is True
    with _connect(empty_database_url) as conn:
        _write(conn, "account-1")
        conn.execute(migrate.message_store_sql().encode())
        assert _write(conn, "account-1") == 1
        count = conn.execute("SELECT count(*) FROM message_store.messages").fetchone()
    assert migrate.install_message_store(empty_database_url) is False
    assert count == (2,)


_OBJECTS_OUTSIDE_THE_STORE = """
SELECT 'relation', c.oid::regclass::text FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('message_store', 'pg_toast')
UNION ALL
SELECT 'function', p.oid::regprocedure::text FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname <> 'message_store'
UNION ALL
SELECT 'type', t.oid::regtype::text FROM pg_type t
JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname NOT IN ('message_store', 'pg_toast')
UNION ALL SELECT 'schema', nspname FROM pg_namespace WHERE nspname <> 'message_store'
UNION ALL SELECT 'extension', extname FROM pg_extension
UNION ALL SELECT 'role', rolname FROM pg_roles
"""


def test_own_store_creates_nothing_outside_its_schema(empty_database_url: str) -> None:
    with _connect(empty_database_url) as conn:
        before = set(conn.execute(_OBJECTS_OUTSIDE_THE_STORE).fetchall())
    migrate.install_message_store(empty_database_url)
    with _connect(empty_database_url) as conn:
        after = set(conn.execute(_OBJECTS_OUTSIDE_THE_STORE).fetchall())
        schema = conn.execute("SELECT to_regnamespace('message_store') IS NOT NULL").fetchone()

    assert after == before
    assert schema == (True,)


_INTERFACE_SHAPE = """
SELECT 'function', p.proname,
       pg_get_function_arguments(p.oid) || ' -> ' || pg_get_function_result(p.oid)
FROM pg_proc p WHERE p.pronamespace = 'message_store'::regnamespace
UNION ALL
SELECT 'index', c.relname, pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'message_store.messages'::regclass
UNION ALL
SELECT 'column', a.attname, format_type(a.atttypid, a.atttypmod) || ' not null: ' || a.attnotnull
    || ' default: ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = 'message_store.messages'::regclass AND a.attnum > 0
UNION ALL
SELECT 'message', a.attname, a.attnum || ': ' || format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = (SELECT typrelid FROM pg_type WHERE oid = 'message_store.message'::regtype)
ORDER BY 1, 2
"""


def _interface_shape(url: str) -> list[tuple[Any, ...]]:
    with _connect(url) as conn:
        return conn.execute(_INTERFACE_SHAPE).fetchall()


def test_own_store_has_message_dbs_table_indexes_row_type_and_signatures(
    pg_server: PgServer, own_template: str, messagedb_template: str
) -> None:
    with (
        pg_server.database(template=own_template) as own,
        pg_server.database(template=messagedb_template) as messagedb,
    ):
        own_shape, messagedb_shape = _interface_shape(own), _interface_shape(messagedb)

    assert own_shape == messagedb_shape
    assert sorted({name for kind, name, _ in own_shape if kind == "function"}) == INTERFACE
