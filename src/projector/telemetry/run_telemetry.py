"""What watches a run: health always; metrics, the summary line and the progress bar when they
are enabled. All of them observe the sink and the sources through one `Observer`.

The metrics endpoint starts before the member's lock is taken, so that a standby answers its
probes too; the lag measurements, summary and progress start with the projecting loops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import anyio
from anyio.abc import TaskGroup, TaskStatus

from projector.model.share import Share
from projector.pipeline.observe import Observer, Observers
from projector.pipeline.sink import StreamsSink
from projector.runtime.replays import Replays
from projector.settings import Settings
from projector.storage.database import Pool
from projector.storage.held import HeldState
from projector.telemetry import health, progress
from projector.telemetry.health import Health, HeldStreamsView
from projector.telemetry.lag import LAG_INTERVAL, LagTracker
from projector.telemetry.metrics import Metrics
from projector.telemetry.progress import BarFactory, CatchUpProgress
from projector.telemetry.summary import Summary


@dataclass(frozen=True, slots=True)
class RunTelemetry:
    health: Health
    metrics: Metrics | None
    summary: Summary | None
    progress: CatchUpProgress | None

    @classmethod
    def for_run(
        cls, settings: Settings, name: str, *, progress_bar: BarFactory | None = None
    ) -> RunTelemetry:
        """The telemetry the settings ask for, for the member ``name``; the catch-up progress
        is drawn with ``progress_bar`` (the CLI's), if given and wanted."""
        wanted = progress_bar is not None and progress.wanted(disabled=not settings.progress)
        status = Health(max_db_age=settings.health_max_db_age, ready_max_lag=settings.ready_max_lag)
        return cls(
            status,
            None if settings.metrics_port is None else Metrics(name, status),
            Summary(name) if settings.summary_interval > 0 else None,
            CatchUpProgress(progress_bar) if wanted and progress_bar is not None else None,
        )

    @property
    def observer(self) -> Observer:
        return Observers(self.health, *([] if self.metrics is None else [self.metrics]))

    @asynccontextmanager
    async def endpoint(self, settings: Settings) -> AsyncIterator[None]:
        """Serve /metrics, /health and /ready (with ``metrics_port``) for the length of the
        block; the runner opens it first, so that it closes last."""
        if self.metrics is None or settings.metrics_port is None:
            yield
            return
        app = health.application(self.health, self.metrics.registry)
        async with anyio.create_task_group() as tasks:
            await tasks.start(
                partial(health.serve, app, host=settings.metrics_host, port=settings.metrics_port),
                name="projector-metrics-endpoint",
            )
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()

    async def run(
        self,
        settings: Settings,
        *,
        pool: Pool,
        share: Share,
        handled: Callable[[], dict[str, int]],
        sink: StreamsSink,
        replays: Replays,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the lag measurements, the progress bar and the summary line, as far as they
        are enabled, until cancelled; started once the first lag measurement is taken."""
        async with anyio.create_task_group() as tasks:
            await self._start(tasks, settings, pool, share, handled, sink, replays)
            task_status.started()

    async def _start(
        self,
        tasks: TaskGroup,
        settings: Settings,
        pool: Pool,
        share: Share,
        handled: Callable[[], dict[str, int]],
        sink: StreamsSink,
        replays: Replays,
    ) -> None:
        tracker = LagTracker(
            pool,
            handled,
            share=share,
            on_measured=self.health.lag_measured,
            on_failed=self.health.lag_failed,
            handled_ahead=sink.handled_in_flight,
        )
        held = partial(_held, sink, replays)
        self.health.held = held
        if self.metrics is not None:
            # Often enough that a healthy database never looks silent to /health.
            interval = min(LAG_INTERVAL, settings.health_max_db_age / 4)
            await tasks.start(partial(tracker.run, interval=interval), name="projector-lag")
        if self.progress is not None:
            tasks.start_soon(
                self.progress.run,
                tracker.measure,
                lambda: sink.handled_events,
                name="projector-progress",
            )
        if self.summary is not None:
            tasks.start_soon(
                partial(
                    self.summary.run,
                    sink,
                    held,
                    tracker.measure,
                    interval=settings.summary_interval,
                ),
                name="projector-summary",
            )


def _held(sink: StreamsSink, replays: Replays) -> HeldStreamsView:
    retrying, parked = replays.held(HeldState.RETRYING), replays.held(HeldState.PARKED)
    return HeldStreamsView(
        # Streams waiting in place (a lost connection) retry too, without being held.
        retrying=retrying.streams + sink.failing_streams,
        parked=parked.streams,
        next_attempt_seconds=retrying.next_attempt_seconds,
        oldest_parked_seconds=parked.oldest_seconds,
    )
