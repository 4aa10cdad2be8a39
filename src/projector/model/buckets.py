"""Elastic consumer groups: which buckets each live member should own, and how a fixed group's
checkpoints become bucket checkpoints. Pure rules, no I/O.

A bucket of an elastic group of ``B`` buckets is exactly a member of a fixed group of size
``B``: stream ``s`` is in bucket ``abs(hash_64(cardinal_id(s))) mod B``
(`events.consumer_group_member`), so every rule written for members holds for buckets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import gcd

from projector.model.events import FIRST_POSITION

DEFAULT_BUCKETS = 64
MAX_BUCKETS = 10_000  # a bucket is a member of a fixed group of that size


def assignment(buckets: int, members: Sequence[str]) -> dict[str, frozenset[int]]:
    """The buckets each member should own: contiguous ranges, in the order of the sorted
    member ids, whose sizes differ by at most one. Every member computes the same answer from
    the same live set, so no coordinator is needed."""
    ordered = sorted(set(members))
    count = len(ordered)
    return {
        member: frozenset(range(index * buckets // count, (index + 1) * buckets // count))
        for index, member in enumerate(ordered)
    }


def target(buckets: int, members: Sequence[str], me: str) -> frozenset[int]:
    """The buckets ``me`` should own among ``members`` (``me`` counts as live)."""
    return assignment(buckets, [*members, me])[me]


def source_members(bucket: int, buckets: int, old_size: int) -> list[int]:
    """The members of a fixed group of ``old_size`` that may own streams of ``bucket``.

    A stream's hash ``h`` puts it in bucket ``h mod B`` and member ``h mod n``, so the two agree
    modulo ``g = gcd(B, n)``; conversely, by the Chinese remainder theorem, every pair
    (bucket, member) that agrees modulo ``g`` is reached by some ``h``.
    """
    common = gcd(buckets, old_size)
    return [member for member in range(old_size) if member % common == bucket % common]


def converted_positions(
    positions: Mapping[int, int], old_size: int, buckets: int
) -> dict[int, int]:
    """Each bucket's checkpoint in one category, from a fixed group's members' ``positions``:
    the lowest among the members that may own its streams, so that nothing is skipped and
    events are delivered again at most once. A member with no checkpoint handled nothing."""
    return {
        bucket: min(
            positions.get(member, FIRST_POSITION)
            for member in source_members(bucket, buckets, old_size)
        )
        for bucket in range(buckets)
    }
