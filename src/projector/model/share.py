"""Which streams a runner owns: its `Share` of a category's streams.

Streams are spread over ``size`` partitions by the hash of their cardinal id (Message DB's
consumer-group rule, `events.consumer_group_member`): a fixed group's member ``i`` of ``n`` owns
partition ``i`` of ``n``; an elastic member owns the buckets it holds of the group's ``B``; a
plain group (size 1) owns every stream, id-less names included. The same rule in SQL is
`projector.storage.message_store.MEMBER_READS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from projector.model.events import consumer_group_member


@dataclass(frozen=True, slots=True)
class Share:
    """The partitions ``owned`` of ``size``."""

    size: int
    owned: frozenset[int]

    @classmethod
    def member(cls, index: int, size: int) -> Share:
        """Member ``index`` of a fixed group of ``size`` (0 of 1: a plain group)."""
        return cls(size, frozenset({index}))

    @classmethod
    def buckets(cls, owned: Iterable[int], size: int) -> Share:
        """The buckets ``owned`` of an elastic group's ``size``."""
        return cls(size, frozenset(owned))

    def partition_of(self, stream_name: str) -> int | None:
        """The partition of ``size`` the stream is in (None: its name has no id)."""
        return 0 if self.size == 1 else consumer_group_member(stream_name, self.size)

    def owns(self, stream_name: str) -> bool:
        """Whether the stream is in an owned partition; in a plain group (size 1) every
        stream is, id-less names included."""
        return self.size == 1 or consumer_group_member(stream_name, self.size) in self.owned


# A plain group's share: every stream of its categories.
EVERY_STREAM = Share.member(0, 1)
