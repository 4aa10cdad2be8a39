"""Whether a runner may start in its group: a fixed member only with the size the group's
checkpoints were written with, and fixed and elastic runners never on one group (an elastic
group's buckets are not members). Checked under the group's start lock, in the transaction
that writes a new member's first checkpoints (see `projector.runner`)."""

from __future__ import annotations

from projector.errors import GroupSizeMismatchError
from projector.storage import buckets, checkpoints
from projector.storage.database import Connection


async def check_size(conn: Connection, group: str, size: int) -> None:
    """Raise GroupSizeMismatchError unless the group's checkpoints were written at ``size``
    (and it is not an elastic group, whose buckets are not members)."""
    if await buckets.stored_buckets(conn, group) is not None:
        raise GroupSizeMismatchError(
            f"group {group!r} is an elastic group: start its members with --elastic (and no "
            "--member / --group-size)"
        )
    sizes = await checkpoints.group_sizes(conn, group)
    if sizes and sizes != [size]:
        stored = " and ".join(map(str, sizes))
        raise GroupSizeMismatchError(
            f"group {group!r} has checkpoints for a group of size {stored}, but this runner "
            f"was started with size {size}: stop every member, run "
            f"`projector rebalance --group {group} --group-size {size}`, then start them again"
        )


async def check_elastic(conn: Connection, group: str) -> None:
    """Refuse to start an elastic member on a fixed group's checkpoints (convert it first)."""
    if await buckets.stored_buckets(conn, group) is not None:
        return
    sizes = await checkpoints.group_sizes(conn, group)
    if sizes:
        raise GroupSizeMismatchError(
            f"group {group!r} is a fixed group of {max(sizes)} member(s): stop its members, "
            f"run `projector group convert {group} --to-elastic`, then start them with --elastic"
        )
