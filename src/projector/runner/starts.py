"""Where a member starts reading each category: its checkpoint, else the beginning, or the
tail with ``from_tail``; and what a category with no events means at a start."""

from __future__ import annotations

import logging

from projector.errors import ConfigurationError
from projector.model.events import FIRST_POSITION
from projector.runner.job import Job
from projector.storage.checkpoints import Checkpoints
from projector.storage.message_store import MessageStore

logger = logging.getLogger(__name__)


async def start_position(
    job: Job, store: MessageStore, member_checkpoints: Checkpoints, category: str
) -> int:
    """The member's checkpoint in ``category``; a member with none yet starts at the beginning
    (or at the tail), written at once."""
    name = member_checkpoints.name
    head = await store.category_head(category)
    next_written = FIRST_POSITION if head is None else head + 1
    if head is None:
        empty_category(job, name, category)
    position = await member_checkpoints.load(category)
    origin = "checkpoint"
    if position is not None and position > next_written:
        _past_the_head(name, job.group, category, position, head)
    if position is None:
        if job.settings.from_tail:
            position, origin = next_written, "tail"
        else:
            position, origin = FIRST_POSITION, "beginning"
        # Written at once: it records the group's size for members that start later, and
        # after --from-tail a restart without it must not replay history.
        await member_checkpoints.commit({category: position})
    logger.info(
        "%s starts %s at %d (from the %s)",
        name,
        category,
        position,
        origin,
        extra={
            "action": "source_started",
            "group": name,
            "category": category,
            "position": position,
            "origin": origin,
        },
    )
    return position


def empty_category(job: Job, name: str, category: str) -> None:
    """A category with no event yet is often a typo (names are case-sensitive): refuse it
    with ``require_events`` (by default, with ``until_caught_up``: there is nothing to
    catch up with), before any checkpoint is written; else say so and wait for its
    events."""
    settings = job.settings
    required = settings.require_events
    if required is None:
        required = settings.until_caught_up
    if required:
        instead = (
            "--no-require-events to catch up with the others"
            if settings.until_caught_up
            else "drop --require-events to wait for its first events"
        )
        raise ConfigurationError(
            f"category {category!r} has no events (names are case-sensitive): check "
            f"--category, or give {instead}"
        )
    logger.warning(
        "%s: category %s has no events yet (names are case-sensitive: a typo?); waiting "
        "for its first events",
        name,
        category,
        extra={"action": "category_empty", "group": name, "category": category},
    )


def _past_the_head(name: str, group: str, category: str, position: int, head: int | None) -> None:
    logger.warning(
        "%s's checkpoint for %s is at %d, past the category's head (%s): the events written "
        "until the store reaches it will be skipped (`projector checkpoints set --group %s "
        "--category %s --to-head` puts it back at the head)",
        name,
        category,
        position,
        "empty" if head is None else head,
        group,
        category,
        extra={
            "action": "checkpoint_past_head",
            "group": name,
            "category": category,
            "position": position,
            "head": head,
        },
    )
