"""/metrics, /health, /ready and the summary line of a runner on real Postgres.

Each test runs a projector in the background with its endpoint on a free port, scrapes it over
HTTP and parses the metrics with the Prometheus client's own parser. ``health_max_db_age`` is
short so that the lag is measured often (a quarter of it) and a silent database shows quickly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from projector import Projection
from projector.localpg import LocalCluster, free_port
from projector.settings import Settings
from projector.storage.database import connect
from tests.support.failures import Flaky, category_positions, message_store_on
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.scraping import answers, probe, scrape
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio



def serving(url: str, **overrides: Any) -> Settings:
    """Settings of a runner that keeps running and serves its endpoint on a free port."""
    values: dict[str, Any] = {
        "categories": ("account",),
        "until_caught_up": False,
        "metrics_port": free_port(),
        "metrics_host": "127.0.0.1",
        "health_max_db_age": 2.0,
        "summary_interval": 0,
    }
    return settings_for(url, **{**values, **overrides})


@asynccontextmanager
async def running(projection: Projection, settings: Settings) -> AsyncIterator[None]:
    """A projector running in the background for the block, its endpoint already listening."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_projection, projection, settings)
        await eventually(lambda: answers(settings), within=20)
        yield
        tasks.cancel_scope.cancel()


async def committed(url: str, group: str, category: str) -> int | None:
    conn = await connect(url)
    async with conn:
        row = await (
            await conn.execute(
                "SELECT position FROM projector.checkpoints"
                " WHERE group_name = %s AND member = 0 AND category = %s",
                (group, category),
            )
        ).fetchone()
    return None if row is None else int(row[0])


ACCOUNT = frozenset({("group", "recorder"), ("category", "account")})
GROUP = frozenset({("group", "recorder")})


async def test_metrics_count_what_was_handled_and_show_the_committed_checkpoint(
    own_store_url: str,
) -> None:
    streams = {f"account-{i}": 1 + i % 3 for i in range(60)}
    await write_events(own_store_url, streams)
    head = (await category_positions(own_store_url, "account"))[-1]
    recorder = Recorder()
    settings = serving(own_store_url, batch_size=25)

    with anyio.fail_after(30):
        async with running(recorder.projection(), settings):

            async def settled() -> bool:
                found = await scrape(settings)
                return (
                    found.get(("projector_checkpoint_position", ACCOUNT)) == head + 1
                    and found.get(("projector_lag_events", ACCOUNT)) == 0
                )

            await eventually(settled, within=20)
            found = await scrape(settings)
            in_database = await committed(own_store_url, "recorder", "account")

    written = sum(streams.values())
    assert found["projector_events_handled_total", ACCOUNT] == written == recorder.handled
    assert found["projector_events_read_total", ACCOUNT] == written
    assert found["projector_handler_duration_seconds_count", ACCOUNT] == len(recorder.calls)
    assert found["projector_checkpoint_position", ACCOUNT] == in_database == head + 1
    assert found["projector_handled_position", ACCOUNT] == head + 1
    assert found["projector_head_position", ACCOUNT] == head
    assert found["projector_lag_seconds", ACCOUNT] == 0
    assert found["projector_batches_in_flight", ACCOUNT] == 0
    assert found["projector_streams_busy", GROUP] == 0
    assert found["projector_streams_parked", GROUP] == 0
    assert found["projector_streams_stuck", GROUP] == 0
    assert found["projector_up", GROUP] == 1
    assert found["projector_ready", GROUP] == 1
    assert ("projector_handler_failures_total", ACCOUNT | {("kind", "RuntimeError")}) not in found


async def test_ready_answers_503_while_behind_and_200_once_caught_up(
    own_store_url: str,
) -> None:
    streams = {f"account-{i}": 2 for i in range(60)}
    await write_events(own_store_url, streams)
    recorder = Recorder(delay=0.05)
    settings = serving(
        own_store_url, ready_max_lag=0, batch_size=10, max_concurrent_streams=4, max_read_ahead=1
    )
    seen: list[tuple[int, dict[str, Any]]] = []

    async def ready() -> bool:
        seen.append(await probe(settings, "/ready"))
        return seen[-1][0] == 200

    with anyio.fail_after(40):
        async with running(recorder.projection(), settings):
            await eventually(ready, within=30, poll=0.1)

    # Probes while starting (lag already measured or not) say so; what matters is that a
    # running projector that is behind answers 503 with its lag.
    lagging = "a category has more than 0 events unhandled"
    behind = [body for status, body in seen if status == 503 and body.get("reason") == lagging]
    assert behind, f"/ready never answered 503 with a lag while behind: {seen}"
    assert behind[0]["lag"]["account"] > 0
    assert seen[-1][1]["lag"] == {"account": 0}
    assert recorder.handled == sum(streams.values())


async def test_a_retrying_stream_is_held_out_of_the_lag_and_shown_apart_in_ready_and_metrics(
    own_store_url: str,
) -> None:
    await write_events(own_store_url, {"account-bad": 2})
    await write_events(own_store_url, {f"account-{i}": 1 for i in range(200)})
    flaky = Flaky(failing={"account-bad": "down"})
    settings = serving(
        own_store_url, ready_max_lag=0, retry_base=0.05, retry_cap=0.1, retry_max_attempts=1000
    )
    labels = frozenset({("group", "flaky"), ("category", "account")})
    group = frozenset({("group", "flaky")})
    seen: list[tuple[int, dict[str, Any]]] = []

    async def settled() -> bool:
        seen.append(await probe(settings, "/ready"))
        status, body = seen[-1]
        return len(flaky.global_positions) == 200 and status == 200 and body["retrying"] == 1

    with anyio.fail_after(40):
        async with running(flaky.projection(), settings):
            await eventually(settled, within=30, poll=0.1)
            samples = await scrape(settings)

    _, body = seen[-1]
    assert body["lag"] == {"account": 0}
    assert body["parked"] == 0
    assert body["next_attempt_seconds"] is not None
    assert samples[("projector_lag_events", labels)] == 0
    assert samples[("projector_streams_retrying", group)] == 1
    assert samples[("projector_streams_parked", group)] == 0
    assert samples[("projector_streams_held_oldest_seconds", group | {("state", "retrying")})] > 0
    assert flaky.handled["account-bad"] == []


async def test_health_fails_while_the_database_is_gone_and_recovers_with_it(
    throwaway_cluster: LocalCluster,
) -> None:
    url = message_store_on(throwaway_cluster)
    await write_events(url, {f"account-{i}": 1 for i in range(10)})
    recorder = Recorder()
    settings = serving(url, health_max_db_age=1.0, connect_timeout=1, outage_limit=120)

    async def health_is(expected: int) -> bool:
        status, body = await probe(settings, "/health")
        return status == expected and body["state"] == "running"

    with anyio.fail_after(50):
        async with running(recorder.projection(), settings):
            await eventually(lambda: recorder.handled == 10, within=10)
            await eventually(lambda: health_is(200), within=10)
            await anyio.to_thread.run_sync(throwaway_cluster.stop)
            await eventually(lambda: health_is(503), within=10)
            status, body = await probe(settings, "/health")
            found = await scrape(settings)
            await anyio.to_thread.run_sync(throwaway_cluster.start)
            await eventually(lambda: health_is(200), within=30)
            after = await scrape(settings)

    assert status == 503
    assert body["reason"] == "no answer from the database for more than 1 s"
    assert body["state"] == "running"
    assert found["projector_up", GROUP] == 0
    assert after["projector_reconnects_total", GROUP] >= 1


async def test_a_summary_line_reports_the_throughput_and_the_lag(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    streams = {f"account-{i}": 2 for i in range(25)}
    await write_events(own_store_url, streams)
    recorder = Recorder()
    settings = settings_for(
        own_store_url, categories=("account",), until_caught_up=False, summary_interval=0.2
    )

    def summaries() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "action", None) == "summary"]

    def caught_up() -> bool:
        return any(getattr(r, "lag", None) == {"account": 0} for r in summaries())

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_projection, recorder.projection(), settings)
            await eventually(lambda: recorder.handled == 50 and caught_up(), within=15)
            tasks.cancel_scope.cancel()

    records = [vars(record) for record in summaries()]
    assert sum(record["handled"] for record in records) == 50
    assert any(record["events_per_second"] > 0 for record in records)
    assert {record["group"] for record in records} == {"recorder"}
    assert {record["parked_streams"] for record in records} == {0}
