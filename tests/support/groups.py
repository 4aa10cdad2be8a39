"""Helpers for consumer-group tests: members run in-process, and the group's checkpoints and
head read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio

from projector import Projection
from projector.admin import groups
from projector.storage import database
from projector.storage.checkpoints import CheckpointRow
from tests.support.projecting import Recorder, run_projection, settings_for

CATEGORY = "account"


async def run_members(
    url: str, members: Mapping[int, Recorder | Projection], *, size: int, **overrides: Any
) -> None:
    """Run the given members of a group of ``size`` at once, each projecting its projection (a
    Recorder's records into it); they read ``CATEGORY`` unless ``overrides`` say otherwise."""
    async with anyio.create_task_group() as tasks:
        for member, runs in members.items():
            settings = settings_for(
                url,
                **{"categories": (CATEGORY,), "member": member, "group_size": size, **overrides},
            )
            projection = runs if isinstance(runs, Projection) else runs.projection()
            tasks.start_soon(run_projection, projection, settings)


async def group_checkpoints(url: str, group: str) -> list[CheckpointRow]:
    conn = await database.connect(url)
    async with conn:
        return await groups.list_checkpoints(conn, group)


async def category_head(url: str, category: str = CATEGORY) -> int:
    """The category's last global position (the category must not be empty)."""
    conn = await database.connect(url)
    async with conn:
        row = await (
            await conn.execute(
                "SELECT max(global_position) FROM message_store.messages"
                " WHERE message_store.category(stream_name) = %s",
                (category,),
            )
        ).fetchone()
    assert row is not None
    assert row[0] is not None, f"category {category} is empty"
    return int(row[0])
