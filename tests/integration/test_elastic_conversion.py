"""Converting a fixed group into an elastic one, and the starts each kind refuses."""

from __future__ import annotations

import pytest

from projector.admin import groups
from projector.errors import ConfigurationError, GroupSizeMismatchError
from projector.model.events import consumer_group_member
from projector.storage import database
from projector.storage.checkpoints import CheckpointRow
from tests.integration.test_elastic import elastic_settings, streams
from tests.support.groups import CATEGORY, group_checkpoints, run_members
from tests.support.projecting import Recorder, run_projection, settings_for, write_events

pytestmark = pytest.mark.anyio

GROUP = "elastic"  # the group elastic_settings runs
OLD_SIZE = 3
BUCKETS = 6  # gcd(6, 3) = 3: bucket b takes the streams of member b mod 3 only


async def _convert(url: str, *, dry_run: bool = False) -> groups.Conversion:
    conn = await database.connect(url)
    async with conn:
        return await groups.convert_to_elastic(conn, GROUP, BUCKETS, dry_run=dry_run)


async def _fixed_run(url: str, members: list[int]) -> dict[int, Recorder]:
    recorders = {member: Recorder(name=GROUP) for member in members}
    await run_members(url, recorders, size=OLD_SIZE, group=GROUP)
    return recorders


async def test_each_bucket_starts_at_its_old_members_checkpoint_and_nothing_is_missed(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, streams(0))
    first = await _fixed_run(url, [0, 1, 2])
    await write_events(url, streams(100))
    second = await _fixed_run(url, [0, 2])  # member 1 stays behind
    await write_events(url, streams(200))
    old = {row.member: row.position for row in await group_checkpoints(url, GROUP)}

    assert (await _convert(url, dry_run=True)).positions == {
        CATEGORY: {bucket: old[bucket % OLD_SIZE] for bucket in range(BUCKETS)}
    }
    assert await group_checkpoints(url, GROUP) != [], "a dry run changes nothing"
    plan = await _convert(url)
    rows: list[CheckpointRow] = await group_checkpoints(url, GROUP)
    assert {(row.member, row.size, row.position) for row in rows} == {
        (bucket, BUCKETS, position) for bucket, position in plan.positions[CATEGORY].items()
    }

    elastic = Recorder(name=GROUP)
    await run_projection(
        elastic.projection(), elastic_settings(url, until_caught_up=True, buckets=BUCKETS)
    )
    handled = {
        (name, position)
        for recorder in [*first.values(), *second.values(), elastic]
        for name, positions in recorder.positions.items()
        for position in positions
    }
    everything = {
        (name, position)
        for batch in (streams(0), streams(100), streams(200))
        for name, count in batch.items()
        for position in range(count)
    }
    assert handled == everything
    # Only member 1's streams were behind: the others' events are not delivered again.
    again = {name for name in elastic.positions if name in streams(100)}
    assert {consumer_group_member(name, OLD_SIZE) for name in again} == {1}


async def test_converting_twice_or_an_empty_group_is_refused(own_store_url: str) -> None:
    with pytest.raises(ConfigurationError, match="nothing to convert"):
        await _convert(own_store_url)
    await write_events(own_store_url, streams(0, count=5))
    await _fixed_run(own_store_url, [0, 1, 2])
    await _convert(own_store_url)
    with pytest.raises(ConfigurationError, match="elastic already"):
        await _convert(own_store_url)


async def test_a_fixed_member_is_refused_on_an_elastic_group_and_the_other_way_round(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, streams(0, count=5))
    await _fixed_run(url, [0, 1, 2])
    with pytest.raises(GroupSizeMismatchError, match="group convert elastic --to-elastic"):
        await run_projection(Recorder(name=GROUP).projection(), elastic_settings(url))
    await _convert(url)
    fixed = settings_for(url, categories=(CATEGORY,), group=GROUP, member=0, group_size=BUCKETS)
    with pytest.raises(GroupSizeMismatchError, match="start its members with --elastic"):
        await run_projection(Recorder(name=GROUP).projection(), fixed)


async def test_group_show_says_whether_a_group_is_fixed_or_does_not_exist(
    own_store_url: str,
) -> None:
    await write_events(own_store_url, streams(0, count=5))
    await _fixed_run(own_store_url, [0, 1, 2])
    conn = await database.connect(own_store_url)
    async with conn:
        with pytest.raises(ConfigurationError, match="is a fixed group of 3 member"):
            await groups.show_elastic(conn, GROUP)
        with pytest.raises(ConfigurationError, match="there is no group 'nosuch'"):
            await groups.show_elastic(conn, "nosuch")
