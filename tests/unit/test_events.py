"""Events and Message DB's stream-name rules: category, id, cardinal id, hash_64, name checks."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector.errors import ConfigurationError, InvalidNameError
from projector.model.events import (
    MAX_NAME_LENGTH,
    Event,
    cardinal_id,
    category,
    consumer_group_member,
    hash_64,
    stream_id,
    validate_category,
    validate_group,
)

_ID = "4c1b2d3e-5f60-4a7b-8c9d-0e1f2a3b4c5d"


def reference_hash_64(value: str) -> int:
    """Message DB's ``('x' || substr(md5(value), 1, 16))::bit(64)::bigint``, spelled out."""
    unsigned = int(hashlib.md5(value.encode()).hexdigest()[:16], 16)
    return unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned


def make_event(data: str | None = "{}", metadata: str | None = None, id: object = _ID) -> Event:
    time = datetime(2024, 1, 1, tzinfo=UTC)
    return Event(11, 2, time, "account-1", "Deposited", data, metadata, id)  # type: ignore[arg-type]


# -- stream names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected_category", "expected_id", "expected_cardinal_id"),
    [
        ("account-1", "account", "1", "1"),
        ("account-1+2", "account", "1+2", "1"),
        ("account-1+2+3", "account", "1+2+3", "1"),
        ("account", "account", None, None),
        ("account:command-7", "account:command", "7", "7"),
        ("a-b-c", "a", "b-c", "b-c"),
        ("a-b-c+d", "a", "b-c+d", "b-c"),
    ],
)
def test_a_stream_name_splits_into_category_id_and_cardinal_id(
    name: str, expected_category: str, expected_id: str | None, expected_cardinal_id: str | None
) -> None:
    assert category(name) == expected_category
    assert stream_id(name) == expected_id
    assert cardinal_id(name) == expected_cardinal_id


# -- hash_64 and consumer groups --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", -3162216497309240828),
        ("1", -4266524885998034046),
        ("123", 2318431741638412123),
        ("abc", -8070080442485551184),
        ("9f3c1d2e-8a51-4f3c-9a2b-6e1f0c7d4b5a", 8555177088312784753),
    ],
)
def test_hash_64_is_the_signed_first_half_of_md5(value: str, expected: int) -> None:
    # The literals come from coreutils' md5sum; reference_hash_64 re-derives them in Python.
    assert reference_hash_64(value) == expected
    assert hash_64(value) == expected


def test_hash_64_matches_the_reference_over_many_values() -> None:
    values = [f"{i}" for i in range(500)] + [str(uuid.UUID(int=i * 7919)) for i in range(500)]
    assert [hash_64(v) for v in values] == [reference_hash_64(v) for v in values]
    assert any(hash_64(v) < 0 for v in values)
    assert any(hash_64(v) > 0 for v in values)


def test_consumer_group_members_split_streams_by_the_hash_of_the_cardinal_id() -> None:
    names = [f"account-{i}" for i in range(1000)]
    members = [consumer_group_member(name, 4) for name in names]
    assert members == [abs(reference_hash_64(str(i))) % 4 for i in range(1000)]
    spread = Counter(members)
    assert set(spread) == {0, 1, 2, 3}
    assert all(180 <= count <= 320 for count in spread.values())


def test_compound_ids_go_to_the_member_of_their_cardinal_id() -> None:
    for size in (2, 3, 5, 8):
        expected = consumer_group_member("account-42", size)
        assert consumer_group_member("account-42+eur", size) == expected
        assert consumer_group_member("account-42+usd+x", size) == expected
        assert consumer_group_member("ledger-42", size) == expected


def test_a_group_of_one_owns_every_stream() -> None:
    assert {consumer_group_member(f"account-{i}", 1) for i in range(50)} == {0}


def test_a_stream_without_id_belongs_to_no_member() -> None:
    assert consumer_group_member("account", 4) is None


# -- name validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["account", "account:command", "Account_2", "v1.accounts", "a+b", "x" * MAX_NAME_LENGTH]
)
def test_a_valid_category_is_accepted(name: str) -> None:
    assert validate_category(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-", "account-1", "account ", "my account", "x" * (MAX_NAME_LENGTH + 1), "kontō"],
)
def test_an_invalid_category_is_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidNameError) as raised:
        validate_category(name)
    assert f"category {name!r} is not valid" in str(raised.value)


@pytest.mark.parametrize(
    "name", ["balances", "balances.v2", "read:model", "B_1", "x" * MAX_NAME_LENGTH]
)
def test_a_valid_group_is_accepted(name: str) -> None:
    assert validate_group(name) == name


@pytest.mark.parametrize(
    "name", ["", "-", "my-group", "my group", "a+b", " balances", "x" * (MAX_NAME_LENGTH + 1)]
)
def test_an_invalid_group_is_refused_by_name(name: str) -> None:
    with pytest.raises(InvalidNameError) as raised:
        validate_group(name)
    assert f"group {name!r} is not valid" in str(raised.value)


def test_an_invalid_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        validate_group("")


# -- Event -------------------------------------------------------------------------------------


def test_event_data_and_metadata_are_decoded_from_json() -> None:
    event = make_event(data='{"amount": 5}', metadata='{"causation": "x"}')
    assert event.data == {"amount": 5}
    assert event.metadata == {"causation": "x"}
    assert event.data is event.data  # decoded once


def test_event_data_is_decoded_only_when_read() -> None:
    event = make_event(data="not json", metadata="{broken")
    assert (event.type, event.position, event.category) == ("Deposited", 2, "account")
    with pytest.raises(json.JSONDecodeError):
        _ = event.data
    with pytest.raises(json.JSONDecodeError):
        _ = event.metadata


# What jsonb can hold: no NaN or infinities, no lone surrogates, no NUL characters.
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(_JSON_VALUES)
def test_data_decodes_to_exactly_what_json_decodes(value: object) -> None:
    text = json.dumps(value)
    decoded = make_event(data=text).data
    assert decoded == json.loads(text)
    assert repr(decoded) == repr(json.loads(text))  # same types too: a huge int stays an int


def test_huge_integers_and_long_decimals_keep_their_exact_value() -> None:
    event = make_event(data='{"id": 123456789012345678901234567890, "n": -9223372036854775809}')
    assert event.data == {"id": 123456789012345678901234567890, "n": -9223372036854775809}


def test_missing_metadata_and_null_data_stay_none() -> None:
    event = make_event(data=None, metadata=None)
    assert event.metadata is None
    assert event.data is None
    assert make_event(data="null").data is None


def test_event_id_is_a_uuid_whether_given_as_text_or_uuid() -> None:
    assert make_event(id=_ID).id == uuid.UUID(_ID)
    assert isinstance(make_event(id=_ID).id, uuid.UUID)
    given = uuid.UUID(_ID)
    assert make_event(id=given).id is given


def test_events_are_equal_by_store_position() -> None:
    time = datetime(2024, 1, 1, tzinfo=UTC)
    a = Event(11, 2, time, "account-1", "Deposited", "{}", None, _ID)
    b = Event(11, 2, time, "account-1", "Withdrawn", '{"x": 1}', "{}", str(uuid.uuid4()))
    c = Event(12, 2, time, "account-1", "Deposited", "{}", None, _ID)
    assert a == b
    assert hash(a) == hash(b)
    assert a != c
