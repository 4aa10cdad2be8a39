"""Metrics from the observer hooks, health verdicts and the summary line, with no database."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import anyio
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from projector.model.events import Event
from projector.model.failures import HandlerTimeout, Hold
from projector.pipeline.sink import StreamsSink
from projector.telemetry.health import Health, HeldStreamsView, State
from projector.telemetry.lag import CategoryLag, LagReading
from projector.telemetry.metrics import Metrics
from projector.telemetry.summary import Summary

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 1, 1, tzinfo=UTC)
EVENT_ID = "7f0c5f1e-1d52-4a0e-9d0c-1f3a4c8e2b6d"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: Metrics) -> Samples:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def reading(at: float, **lags: int) -> LagReading:
    categories = {
        name: CategoryLag(name, 10, 9 + events if events else 9, events, 0.5 if events else 0.0)
        for name, events in lags.items()
    }
    return LagReading(categories, at, 1_700_000_000.0)


def event(stream_name: str, position: int) -> Event:
    return Event(position + 1, position, T0, stream_name, "Happened", "{}", None, EVENT_ID)


def test_handler_calls_are_counted_per_category_and_failures_per_kind() -> None:
    metrics = Metrics("balances-1", Health(max_db_age=30, ready_max_lag=0))

    metrics.events_read("account", 5, 0.01)
    metrics.events_read("invoice", 0, 0.01)
    metrics.handler_finished("account-1", 3, 0.002, None)
    metrics.handler_finished("account-2", 2, 0.3, None)
    metrics.handler_finished("account-2", 2, 0.02, RuntimeError("boom"))
    metrics.handler_finished("invoice-7", 1, 120.0, HandlerTimeout("too slow"))
    metrics.reconnecting("reading account")

    found = scrape(metrics)
    account = labels(group="balances-1", category="account")
    invoice = labels(group="balances-1", category="invoice")
    assert found["projector_events_read_total", account] == 5
    assert found["projector_events_read_total", invoice] == 0
    assert found["projector_events_handled_total", account] == 5
    # From its category's first call on, failed or not: rate() needs the counter at 0 first.
    assert found["projector_events_handled_total", invoice] == 0
    assert found["projector_handler_duration_seconds_count", account] == 3
    assert found["projector_handler_duration_seconds_bucket", account | {("le", "0.0025")}] == 1
    assert found["projector_handler_duration_seconds_bucket", invoice | {("le", "60.0")}] == 0
    assert found["projector_handler_failures_total", account | {("kind", "RuntimeError")}] == 1
    assert found["projector_handler_failures_total", invoice | {("kind", "timeout")}] == 1
    assert found["projector_reconnects_total", labels(group="balances-1")] == 1


def test_two_runners_in_one_process_have_registries_of_their_own() -> None:
    first = Metrics("balances", Health(max_db_age=30, ready_max_lag=0))
    second = Metrics("balances", Health(max_db_age=30, ready_max_lag=0))

    first.handler_finished("account-1", 4, 0.01, None)

    group = labels(group="balances", category="account")
    assert scrape(first)["projector_events_handled_total", group] == 4
    assert ("projector_events_handled_total", group) not in scrape(second)


async def test_a_standby_is_alive_but_not_ready() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)

    assert health.liveness().ok
    assert not health.readiness().ok
    assert health.readiness().details["reason"] == "the runner is starting"


async def test_liveness_fails_when_the_database_has_not_answered_for_max_db_age() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)
    health.state = State.RUNNING
    assert not health.liveness().ok, "running, and the database never answered"

    now = anyio.current_time()
    health.database_answered(now - 4, 1_700_000_000.0)
    assert health.liveness().ok

    health.database_answered(now - 6, 1_700_000_000.0)
    verdict = health.liveness()
    assert not verdict.ok
    assert verdict.details["reason"] == "no answer from the database for more than 5 s"


async def test_a_read_counts_as_an_answer_from_the_database() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)
    health.state = State.RUNNING

    health.events_read("account", 0, 0.001)

    assert health.liveness().ok


async def test_liveness_fails_once_the_loops_have_stopped() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)
    health.events_read("account", 0, 0.001)
    health.state = State.STOPPED

    assert not health.liveness().ok


async def test_ready_once_every_category_lags_at_most_ready_max_lag() -> None:
    health = Health(max_db_age=5, ready_max_lag=2)
    health.state = State.RUNNING
    now = anyio.current_time()

    health.lag_measured(reading(now, account=3, invoice=0))
    behind = health.readiness()
    health.lag_measured(reading(now, account=2, invoice=0))
    caught_up = health.readiness()

    assert not behind.ok
    assert behind.details["lag"] == {"account": 3, "invoice": 0}
    assert caught_up.ok


async def test_a_stale_lag_reading_is_not_ready() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)
    health.state = State.RUNNING

    health.lag_measured(reading(anyio.current_time() - 6, account=0))

    assert not health.readiness().ok
    assert not health.liveness().ok


async def test_health_gauges_follow_the_verdicts() -> None:
    health = Health(max_db_age=5, ready_max_lag=0)
    metrics = Metrics("balances", health)
    health.state = State.RUNNING
    group = labels(group="balances")

    before = scrape(metrics)
    health.lag_measured(reading(anyio.current_time(), account=0))
    after = scrape(metrics)

    assert before["projector_up", group] == 0
    assert ("projector_last_database_success_timestamp_seconds", group) not in before
    assert after["projector_up", group] == 1
    assert after["projector_ready", group] == 1
    assert after["projector_last_database_success_timestamp_seconds", group] == 1_700_000_000.0


async def test_the_summary_line_reports_throughput_lag_and_streams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="projector")

    async def handle(stream_name: str, events: list[Event]) -> int:
        if stream_name == "account-2":
            raise RuntimeError("not counted")
        return events[-1].position + 1

    async def hold(stream_name: str, events: list[Event], error: Exception, attempt: int) -> Hold:
        return Hold(str(error))

    summary = Summary("balances")
    async with StreamsSink(
        handle,
        max_concurrent_streams=1,
        max_read_ahead=1,
        on_failure=hold,
        held=frozenset({"account-9"}),
    ) as sink:
        lane = sink.lane("account")
        good = [event("account-1", position) for position in range(30)]
        await lane.submit([*good, *(event("account-2", p) for p in range(10))], 0)
        await lane.wait_empty()
        # What the runner's recovery says of the streams it holds (account-2 among them).
        held = HeldStreamsView(retrying=1, parked=3)
        summary.log(sink, held, reading(anyio.current_time(), account=7), seconds=2.0)
        summary.log(sink, held, None, seconds=2.0)

    first, second = [r for r in caplog.records if getattr(r, "action", None) == "summary"]
    assert (
        first.getMessage()
        == "balances: 15.0 events/s, lag account 7, 0 busy, 1 retrying and 3 parked streams"
    )
    assert sink.held_streams == {"account-2", "account-9"}
    fields = vars(first)
    assert fields["handled"] == 30
    assert fields["events_per_second"] == 15.0
    assert fields["lag"] == {"account": 7}
    assert (fields["busy_streams"], fields["retrying_streams"], fields["parked_streams"]) == (
        0,
        1,
        3,
    )
    assert vars(second)["handled"] == 0
    assert vars(second)["lag"] is None


class _Holder:
    """An elastic member as metrics see it: the buckets it owns, its rebalances."""

    def __init__(self) -> None:
        self.owned: frozenset[int] = frozenset()
        self.rebalances = 0


def test_an_elastic_member_reports_its_buckets_and_rebalances() -> None:
    metrics = Metrics("shop", Health(max_db_age=30, ready_max_lag=0))
    member = _Holder()
    metrics.collect_buckets(member)
    group = frozenset({("group", "shop")})
    assert scrape(metrics)[("projector_buckets_owned", group)] == 0

    member.owned, member.rebalances = frozenset({0, 1, 2}), 2
    samples = scrape(metrics)
    assert samples[("projector_buckets_owned", group)] == 3
    assert samples[("projector_rebalances_total", group)] == 2
