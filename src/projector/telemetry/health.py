"""Liveness and readiness of a runner, and the HTTP endpoint that serves them with the metrics.

The endpoint runs on the runner's own event loop, so an answer at all means the loop is not
wedged. Liveness then asks whether the runner's loops run and the database answered lately (a
read, or a lag measurement, within ``max_db_age`` seconds); readiness whether the last lag
measurement is that recent and within ``ready_max_lag`` events in every category. Failing
streams do not make a runner unready (they are out of the read path, and the others are
current); /ready's details count them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry

from projector import cleanup
from projector.errors import ConfigurationError, DatabaseUnavailableError
from projector.pipeline.observe import Observer
from projector.telemetry.lag import LagReading

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)



class State(enum.StrEnum):
    STARTING = "starting"  # connecting, loading checkpoints, or waiting as a standby
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Verdict:
    """An answer to a probe: ``ok`` (HTTP 200, else 503) and what it was based on."""

    ok: bool
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HeldStreamsView:
    """A runner's failing streams, for /ready's details: their events are not handled (and
    not counted in the lag) until they succeed again."""

    retrying: int = 0
    parked: int = 0
    next_attempt_seconds: float | None = None
    oldest_parked_seconds: float | None = None


class Health(Observer):
    """What a runner saw last, as liveness and readiness verdicts.

    As an observer it counts each read as an answer from the database; the runner reports its
    state, and the lag tracker its readings and failures.
    """

    def __init__(self, *, max_db_age: float, ready_max_lag: int) -> None:
        self.max_db_age = max_db_age
        self.ready_max_lag = ready_max_lag
        self.state = State.STARTING
        self.lag: LagReading | None = None
        self.answered_at: float | None = None  # anyio.current_time() of the last answer
        self.answered_wall: float | None = None  # the same as Unix time, for the metric
        self.last_error: str | None = None
        self.paused: str | None = None  # why the projection waits for its dependencies
        self.held: Callable[[], HeldStreamsView] = HeldStreamsView  # failing streams

    # -- what the runner reports ----------------------------------------------------------

    def events_read(self, category: str, count: int, seconds: float) -> None:
        self.database_answered(anyio.current_time(), time.time())

    def database_answered(self, at: float, wall: float) -> None:
        self.answered_at, self.answered_wall, self.last_error = at, wall, None

    def lag_measured(self, reading: LagReading) -> None:
        self.lag = reading
        self.database_answered(reading.at, reading.wall)

    def lag_failed(self, error: DatabaseUnavailableError) -> None:
        self.last_error = str(error)

    def dependency_paused(self, reason: str) -> None:
        self.paused = reason

    def dependency_resumed(self, reason: str) -> None:
        self.paused = None

    # -- verdicts ---------------------------------------------------------------------------

    def database_age(self) -> float | None:
        """Seconds since the database last answered (None: it never did)."""
        return None if self.answered_at is None else anyio.current_time() - self.answered_at

    def liveness(self) -> Verdict:
        age = self.database_age()
        details: dict[str, object] = {"state": self.state.value, "database_age": _round(age)}
        if self.last_error is not None:
            details["database_error"] = self.last_error
        if self.paused is not None:
            details["paused"] = self.paused
        if self.state is State.STARTING:
            # Waiting for the member's lock as a standby is this process's job, not a failure.
            return Verdict(True, details)
        if self.state is State.STOPPED:
            return Verdict(False, {**details, "reason": "the runner's loops have stopped"})
        if age is None or age > self.max_db_age:
            reason = f"no answer from the database for more than {self.max_db_age:g} s"
            return Verdict(False, {**details, "reason": reason})
        return Verdict(True, details)

    def readiness(self) -> Verdict:
        lag = self.lag
        details: dict[str, object] = {"state": self.state.value, "max_lag": self.ready_max_lag}
        if lag is not None:
            details["lag"] = {name: c.events for name, c in lag.categories.items()}
            details["lag_seconds"] = {name: _round(c.seconds) for name, c in lag.categories.items()}
        if self.paused is not None:
            details["paused"] = self.paused
        held = self.held()
        details.update(dataclasses.asdict(held))
        if self.state is not State.RUNNING:
            return Verdict(False, {**details, "reason": f"the runner is {self.state.value}"})
        if lag is None or anyio.current_time() - lag.at > self.max_db_age:
            reason = f"lag not measured in the last {self.max_db_age:g} s"
            return Verdict(False, {**details, "reason": reason})
        if not lag.within(self.ready_max_lag):
            reason = f"a category has more than {self.ready_max_lag} events unhandled"
            if held.retrying:
                reason = f"retrying {held.retrying} stream(s); {reason}"
            return Verdict(False, {**details, "reason": reason})
        return Verdict(True, details)


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def application(health: Health, registry: CollectorRegistry) -> web.Application:
    # Imported here: aiohttp is a quarter of a second of start-up that only a served
    # endpoint needs.
    from aiohttp import web
    from prometheus_client.aiohttp import make_aiohttp_handler

    """``/metrics`` (Prometheus text or OpenMetrics), ``/health`` and ``/ready``."""

    async def liveness(request: web.Request) -> web.Response:
        return _answer(health.liveness())

    async def readiness(request: web.Request) -> web.Response:
        return _answer(health.readiness())

    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/health", liveness)
    app.router.add_get("/ready", readiness)
    return app


def _answer(verdict: Verdict) -> web.Response:
    from aiohttp import web

    body = {"status": "ok" if verdict.ok else "failing", **verdict.details}
    return web.Response(
        status=200 if verdict.ok else 503,
        text=json.dumps(body),
        content_type="application/json",
    )


async def serve(
    app: web.Application,
    *,
    host: str,
    port: int,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``host:port`` until cancelled; started once the port listens."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, shutdown_timeout=cleanup.ENDPOINT_STOP)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; choose another "
                "--metrics-port (PROJECTOR_METRICS_PORT) or --metrics-host"
            ) from exc
        logger.info(
            "serving /metrics, /health and /ready on %s:%d",
            host,
            port,
            extra={"action": "metrics_serving", "host": host, "port": port},
        )
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with cleanup.shielded("closing the metrics endpoint", cleanup.ENDPOINT_STOP + 1):
            await runner.cleanup()
