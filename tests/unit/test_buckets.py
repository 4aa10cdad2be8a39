"""The elastic group's rules: the bucket assignment and the conversion from a fixed group."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from projector.model.buckets import assignment, converted_positions, source_members, target
from projector.model.events import FIRST_POSITION, consumer_group_member

members_st = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=40, unique=True)


@given(st.integers(min_value=1, max_value=512), members_st)
def test_every_bucket_has_exactly_one_owner_and_shares_differ_by_at_most_one(
    buckets: int, members: list[str]
) -> None:
    owned = assignment(buckets, members)
    assert set(owned) == set(members)
    every = [bucket for share in owned.values() for bucket in share]
    assert sorted(every) == list(range(buckets))
    sizes = [len(share) for share in owned.values()]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(min_value=1, max_value=256), members_st)
def test_each_member_owns_a_contiguous_range(buckets: int, members: list[str]) -> None:
    for share in assignment(buckets, members).values():
        if share:
            assert sorted(share) == list(range(min(share), max(share) + 1))


def test_the_assignment_does_not_depend_on_the_order_members_are_listed_in() -> None:
    assert assignment(64, ["c", "a", "b"]) == assignment(64, ["b", "c", "a"])


def test_a_member_counts_itself_live_when_computing_its_target() -> None:
    assert target(8, [], "me") == frozenset(range(8))
    assert target(8, ["a"], "b") == frozenset(range(4, 8))


@given(
    st.integers(min_value=1, max_value=128),
    st.integers(min_value=1, max_value=48),
)
def test_a_stream_is_in_a_bucket_its_old_member_may_own(buckets: int, old_size: int) -> None:
    for index in range(200):
        stream = f"account-{uuid.UUID(int=index * 7919 + buckets * 31 + old_size)}"
        bucket = consumer_group_member(stream, buckets)
        member = consumer_group_member(stream, old_size)
        assert bucket is not None
        assert member is not None
        assert member in source_members(bucket, buckets, old_size)


def test_every_source_member_can_really_own_streams_of_the_bucket() -> None:
    buckets, old_size = 12, 8  # gcd 4: bucket b takes streams of members b mod 4 and b mod 4 + 4
    reached: set[tuple[int, int]] = set()
    for index in range(20_000):
        stream = f"account-{uuid.UUID(int=index)}"
        bucket = consumer_group_member(stream, buckets)
        member = consumer_group_member(stream, old_size)
        assert bucket is not None
        assert member is not None
        reached.add((bucket, member))
    expected = {(b, m) for b in range(buckets) for m in source_members(b, buckets, old_size)}
    assert reached == expected


def test_a_bucket_starts_at_the_lowest_checkpoint_of_the_members_it_takes_streams_from() -> None:
    positions = {0: 100, 1: 50, 2: 70, 3: 90}
    converted = converted_positions(positions, old_size=4, buckets=8)
    # gcd(8, 4) = 4: bucket b takes streams of member b mod 4 only.
    assert converted == {b: positions[b % 4] for b in range(8)}
    coprime = converted_positions(positions, old_size=4, buckets=5)
    assert coprime == {b: 50 for b in range(5)}


def test_a_member_without_a_checkpoint_sends_its_buckets_back_to_the_beginning() -> None:
    converted = converted_positions({0: 100}, old_size=2, buckets=4)
    assert converted == {0: 100, 1: FIRST_POSITION, 2: 100, 3: FIRST_POSITION}
