"""The core pipeline end to end, in-process, on real Postgres with both message stores."""

from __future__ import annotations

import anyio
import pytest

from projector.errors import SchemaMissingError
from tests.support.projecting import (
    Recorder,
    checkpoint,
    run_projection,
    settings_for,
    write_events,
)

pytestmark = pytest.mark.anyio


def _streams(categories: list[str], per_category: int, events: int) -> dict[str, int]:
    return {
        f"{category}-{i}": 1 + (i % events) for category in categories for i in range(per_category)
    }


async def test_every_event_of_several_categories_is_handled_once_and_in_stream_order(
    database_url: str,
) -> None:
    streams = _streams(["account", "invoice"], per_category=1000, events=4)
    await write_events(database_url, streams, writers=6)
    recorder = Recorder()

    settings = settings_for(
        database_url, categories=("account", "invoice"), batch_size=200, max_concurrent_streams=8
    )
    await run_projection(recorder.projection(), settings)

    assert recorder.overlaps == []
    assert {name: recorder.positions[name] for name in streams} == {
        name: list(range(count)) for name, count in streams.items()
    }
    assert len(recorder.global_positions) == sum(streams.values())
    for category in ("account", "invoice"):
        last = recorder.last_global_position[category]
        assert await checkpoint(database_url, "recorder", category) == last + 1


async def test_a_restart_resumes_from_the_checkpoint(database_url: str) -> None:
    await write_events(database_url, {f"account-{i}": 2 for i in range(50)})
    first = Recorder()
    await run_projection(first.projection(), settings_for(database_url, categories=("account",)))
    await write_events(database_url, {f"account-{i}": 1 for i in range(50, 60)})

    second = Recorder()
    await run_projection(second.projection(), settings_for(database_url, categories=("account",)))

    assert first.handled == 100
    assert sorted(second.positions) == [f"account-{i}" for i in sorted(range(50, 60), key=str)]
    assert min(second.global_positions) > max(first.global_positions)


async def test_from_tail_skips_history_and_a_restart_keeps_skipping_it(database_url: str) -> None:
    await write_events(database_url, {f"account-{i}": 3 for i in range(20)})
    skipping = Recorder()
    settings = settings_for(database_url, categories=("account",), from_tail=True)
    await run_projection(skipping.projection(), settings)
    assert skipping.handled == 0

    await write_events(database_url, {"account-new": 2})
    later = settings_for(database_url, categories=("account",))
    await run_projection(skipping.projection(), later)

    assert dict(skipping.positions) == {"account-new": [0, 1]}


async def test_a_projection_follows_events_written_while_it_runs(database_url: str) -> None:
    recorder = Recorder()
    streams = _streams(["account"], per_category=300, events=3)
    settings = settings_for(database_url, categories=("account",), until_caught_up=False)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await write_events(database_url, streams, writers=3)
            await recorder.wait_until_handled(sum(streams.values()))
            tasks.cancel_scope.cancel()

    assert {name: recorder.positions[name] for name in streams} == {
        name: list(range(count)) for name, count in streams.items()
    }


async def test_a_graceful_stop_commits_the_checkpoint_of_what_was_handled(
    database_url: str,
) -> None:
    await write_events(database_url, {f"account-{i}": 1 for i in range(40)})
    recorder = Recorder(delay=0.01)
    settings = settings_for(
        database_url,
        categories=("account",),
        until_caught_up=False,
        checkpoint_interval=3600,  # only the stop itself may commit
        batch_size=10,
        max_concurrent_streams=2,
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await recorder.wait_until_handled(15)
            tasks.cancel_scope.cancel()

    committed = await checkpoint(database_url, "recorder", "account")
    assert committed is not None
    handled = set(recorder.global_positions)
    below = {p for p in range(1, committed)}
    assert below <= handled, "the checkpoint passed an event that was not handled"
    assert committed > 10, "the stop did not commit the batches it had completed"


async def test_a_database_without_a_message_store_is_refused_with_the_command_to_run(
    empty_database_url: str,
) -> None:
    with pytest.raises(SchemaMissingError, match="projector migrate --message-store"):
        await run_projection(
            Recorder().projection(), settings_for(empty_database_url, categories=("account",))
        )
