"""Prometheus metrics of one runner, in a registry of its own.

Counters are updated by the observer hooks as things happen; gauges (streams, batches,
positions, lag, health) are read from the runner's state at scrape time, so they cost nothing
between scrapes. Every metric carries ``group``: the checkpoints' owner, e.g. ``balances`` or
``balances-1``, so that several runners can share one Prometheus.

The per-call figures (events handled, the handler histogram) are counted in plain integers and
turned into metrics at scrape time too: prometheus_client's own children take a lock and a label
lookup per update, several microseconds, which a per-call update would pay on the hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from projector.model.events import category
from projector.model.failures import HandlerTimeout
from projector.pipeline.lane import Lane
from projector.pipeline.observe import Observer
from projector.pipeline.sink import StreamsSink
from projector.pipeline.streams import TroubledStream
from projector.runtime.checkpoint_writer import CheckpointWriter
from projector.runtime.replays import HeldCount
from projector.storage.held import HeldState
from projector.telemetry.health import Health

# From a quick upsert (1 ms) to a call near the default handler_timeout.
HANDLER_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)


class HeldView(Protocol):
    """What a scrape reads of the streams a runner holds (`Replays`' view)."""

    def held(self, state: HeldState) -> HeldCount: ...

    def troubled(self, *, longer_than: float) -> list[TroubledStream]: ...


@dataclass(frozen=True, slots=True)
class RunnerState:
    """What a scrape reads: the running pipeline's parts."""

    sink: StreamsSink
    lanes: Mapping[str, Lane]
    writer: CheckpointWriter
    health: Health
    replays: HeldView
    stuck_after: float


class Metrics(Observer):
    """The runner's metrics; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, group: str, health: Health) -> None:
        self.group = group
        self.registry = CollectorRegistry()
        self.registry.register(_HealthCollector(group, health))
        by_category = ("group", "category")
        self._read = Counter(
            "projector_events_read",
            "Events read from the message store",
            by_category,
            registry=self.registry,
        )
        self._calls: dict[str, _CategoryCalls] = {}
        self.registry.register(_CallCollector(group, self._calls))
        self._failures = Counter(
            "projector_handler_failures",
            "Failed handler calls, by kind: the exception's class name, or timeout",
            (*by_category, "kind"),
            registry=self.registry,
        )
        self._reconnects = Counter(
            "projector_reconnects",
            "Database operations retried because the database was unavailable",
            ("group",),
            registry=self.registry,
        )
        self._reconnects.labels(group)
        self._outages = Counter(
            "projector_database_outages",
            "Outages of the database that handler calls waited for (see outage_started)",
            ("group",),
            registry=self.registry,
        )
        self._outages.labels(group)
        self._outage_seconds = Counter(
            "projector_database_outage_seconds",
            "Seconds handler calls waited for the database, over all ended outages",
            ("group",),
            registry=self.registry,
        )
        self._outage_seconds.labels(group)

    def collect_from(self, state: RunnerState) -> None:
        """Report the gauges of a running pipeline from now on (once per runner)."""
        self.registry.register(_StateCollector(self.group, state))

    def collect_buckets(self, member: BucketHolder) -> None:
        """Report an elastic member's buckets and rebalances from now on (once per process)."""
        self.registry.register(_BucketCollector(self.group, member))

    # -- observer hooks -----------------------------------------------------------------------

    def events_read(self, category: str, count: int, seconds: float) -> None:
        self._read.labels(self.group, category).inc(count)

    def handler_finished(
        self, stream_name: str, count: int, seconds: float, error: BaseException | None
    ) -> None:
        name = category(stream_name)
        calls = self._calls.get(name)
        if calls is None:
            calls = self._calls[name] = _CategoryCalls()
        # Most calls of a catch-up take less than the first bound: no search for them.
        calls.counts[0 if seconds <= FIRST_BOUND else bisect_left(HANDLER_BUCKETS, seconds)] += 1
        calls.total += seconds
        if error is None:
            calls.handled += count
        else:
            self._failures.labels(self.group, name, failure_kind(error)).inc()

    def reconnecting(self, doing: str) -> None:
        self._reconnects.labels(self.group).inc()

    def outage_started(self) -> None:
        self._outages.labels(self.group).inc()

    def outage_ended(self, seconds: float) -> None:
        self._outage_seconds.labels(self.group).inc(seconds)


class _CategoryCalls:
    """One category's handler calls: a histogram of their durations, as counts per bucket (not
    cumulative, the last for calls longer than every bound), and the events of those that
    succeeded."""

    __slots__ = ("counts", "handled", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(HANDLER_BUCKETS) + 1)
        self.total = 0.0
        self.handled = 0


FIRST_BOUND = HANDLER_BUCKETS[0]


class _CallCollector(Collector):
    """The per-call counts, as Prometheus metrics, at each scrape."""

    def __init__(self, group: str, calls: dict[str, _CategoryCalls]) -> None:
        self._group = group
        self._calls = calls

    def collect(self) -> Iterable[Metric]:
        handled = CounterMetricFamily(
            "projector_events_handled",
            "Events given to handler calls that returned without error",
            labels=("group", "category"),
        )
        duration = HistogramMetricFamily(
            "projector_handler_duration_seconds",
            "Duration of handler calls, failed ones included",
            labels=("group", "category"),
        )
        bounds = [*map(floatToGoString, HANDLER_BUCKETS), "+Inf"]
        for name, calls in list(self._calls.items()):
            handled.add_metric((self._group, name), calls.handled)
            cumulative = list(accumulate(calls.counts))
            duration.add_metric(
                (self._group, name), list(zip(bounds, cumulative, strict=True)), calls.total
            )
        return (handled, duration)


def failure_kind(error: BaseException) -> str:
    return "timeout" if isinstance(error, HandlerTimeout) else type(error).__name__


class _StateCollector(Collector):
    """Gauges read from the runner's state at each scrape."""

    def __init__(self, group: str, state: RunnerState) -> None:
        self._group = group
        self._state = state

    def collect(self) -> Iterable[Metric]:
        yield from self._streams()
        yield from self._positions()
        yield from self._lag()

    def _streams(self) -> Iterable[Metric]:
        sink, replays, group = self._state.sink, self._state.replays, self._group
        busy = _gauge("projector_streams_busy", "Streams with a handler call running")
        busy.add_metric((group,), sink.busy_streams)
        retrying, parked = replays.held(HeldState.RETRYING), replays.held(HeldState.PARKED)
        retrying_gauge = _gauge(
            "projector_streams_retrying",
            "Streams held out of the read path by this runner, waiting for their next attempt",
        )
        retrying_gauge.add_metric((group,), retrying.streams)
        parked_gauge = _gauge(
            "projector_streams_parked", "Streams parked by this runner (attempts used up)"
        )
        parked_gauge.add_metric((group,), parked.streams)
        oldest = _gauge(
            "projector_streams_held_oldest_seconds",
            "Seconds since the oldest held stream of each state first failed",
            "state",
        )
        for state, count in ((HeldState.RETRYING, retrying), (HeldState.PARKED, parked)):
            if count.oldest_seconds is not None:
                oldest.add_metric((group, state.value), count.oldest_seconds)
        after = self._state.stuck_after
        stuck = _gauge(
            "projector_streams_stuck",
            "Streams running, or failing and retrying, for longer than stuck_after",
        )
        stuck.add_metric(
            (group,),
            len(sink.troubled(longer_than=after)) + len(replays.troubled(longer_than=after)),
        )
        batches = _gauge(
            "projector_batches_in_flight", "Batches read and not yet fully handled", "category"
        )
        for name, lane in self._state.lanes.items():
            batches.add_metric((group, name), lane.in_flight)
        return (busy, retrying_gauge, parked_gauge, oldest, stuck, batches)

    def _positions(self) -> Iterable[Metric]:
        writer, group = self._state.writer, self._group
        committed = _gauge(
            "projector_checkpoint_position",
            "Committed checkpoint: the next global position to read after a restart",
            "category",
        )
        for name, position in writer.committed.items():
            committed.add_metric((group, name), position)
        handled = _gauge(
            "projector_handled_position",
            "Every event below this global position is handled (not yet committed, maybe)",
            "category",
        )
        for name, position in writer.completed.items():
            handled.add_metric((group, name), position)
        return (committed, handled)

    def _lag(self) -> Iterable[Metric]:
        group, reading = self._group, self._state.health.lag
        events = _gauge("projector_lag_events", "Events of this member not yet handled", "category")
        behind = _gauge(
            "projector_lag_behind_events",
            "Events from the handled position on, handled or not (what the checkpoint waits on)",
            "category",
        )
        seconds = _gauge(
            "projector_lag_seconds", "Age of the oldest event not yet handled", "category"
        )
        head = _gauge(
            "projector_head_position", "Global position of the member's newest event", "category"
        )
        if reading is not None:
            for name, lag in reading.categories.items():
                events.add_metric((group, name), lag.events)
                behind.add_metric((group, name), lag.behind)
                seconds.add_metric((group, name), lag.seconds)
                if lag.head is not None:
                    head.add_metric((group, name), lag.head)
        return (events, behind, seconds, head)


class BucketHolder(Protocol):
    """What an elastic member tells metrics: the buckets it owns now, its rebalances so far."""

    @property
    def owned(self) -> frozenset[int]: ...

    @property
    def rebalances(self) -> int: ...


class _BucketCollector(Collector):
    """An elastic member's buckets owned and rebalances, at each scrape."""

    def __init__(self, group: str, member: BucketHolder) -> None:
        self._group = group
        self._member = member

    def collect(self) -> Iterable[Metric]:
        owned = _gauge("projector_buckets_owned", "Buckets this elastic member owns now")
        owned.add_metric((self._group,), float(len(self._member.owned)))
        rebalances = CounterMetricFamily(
            "projector_rebalances",
            "Rebalances this elastic member went through (its bucket set changed)",
            labels=("group",),
        )
        rebalances.add_metric((self._group,), float(self._member.rebalances))
        return [owned, rebalances]


class _HealthCollector(Collector):
    """Liveness, readiness and the last database answer, from the start (standby included)."""

    def __init__(self, group: str, health: Health) -> None:
        self._group = group
        self._health = health

    def collect(self) -> Iterable[Metric]:
        health, group = self._health, self._group
        up = _gauge("projector_up", "1 while /health answers 200, else 0")
        up.add_metric((group,), 1.0 if health.liveness().ok else 0.0)
        ready = _gauge("projector_ready", "1 while /ready answers 200, else 0")
        ready.add_metric((group,), 1.0 if health.readiness().ok else 0.0)
        found = [up, ready]
        if health.answered_wall is not None:
            last = _gauge(
                "projector_last_database_success_timestamp_seconds",
                "Unix time of the last successful database round trip",
            )
            last.add_metric((group,), health.answered_wall)
            found.append(last)
        return found


def _gauge(name: str, documentation: str, *extra: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=("group", *extra))
