"""The dependency gate and a source behind it, with no database: what is admitted, when a source
waits, and how pauses are reported.

Measurements are fed to the gate by hand (`DependencyGate.update`), or by a fake ``measure``;
`anyio.wait_all_tasks_blocked` lets a waiting source run until nothing more can happen, so that
"this was not submitted" is checked without sleeping. Every test runs under `anyio.fail_after`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
import pytest

from projector.errors import ConfigurationError, InvalidNameError
from projector.model.dependencies import Dependency, PauseCallback
from projector.model.events import Event, Read
from projector.model.projection import Projection
from projector.pipeline.source import CategorySource
from projector.runtime.dependencies import DependencyGate, Upstream
from projector.telemetry.health import Health, State

TIMEOUT = 2.0
_EVENT_ID = "7f0c5f1e-1d52-4a0e-9d0c-1f3a4c8e2b6d"
_T0 = datetime(2024, 1, 1, tzinfo=UTC)


def events_at(*global_positions: int) -> list[Event]:
    """One event per global position, each in a stream of its own."""
    return [
        Event(g, 0, _T0, f"invoice-{g}", "Happened", "{}", None, _EVENT_ID)
        for g in global_positions
    ]


def positions(events: Sequence[Event]) -> list[int]:
    return [event.global_position for event in events]


def open_gate(
    frontier: int,
    *,
    on_pause: Sequence[PauseCallback] = (),
    on_resume: Sequence[PauseCallback] = (),
) -> DependencyGate:
    gate = DependencyGate(_never_measured, group="reports", on_pause=on_pause, on_resume=on_resume)
    gate.update([Upstream("balances", frontier)])
    return gate


async def _never_measured() -> list[Upstream]:
    raise AssertionError("these tests feed the gate by hand")


# -- declaring dependencies ---------------------------------------------------------------------


def test_a_dependency_names_a_valid_group_and_a_lag_of_zero_or_more() -> None:
    Dependency("balances", max_lag=0)  # the least lag: pause while the upstream has any left
    Dependency("balances")  # no limit: wait for it in global order only
    with pytest.raises(InvalidNameError):
        Dependency("balances-1")
    with pytest.raises(ConfigurationError, match="max_lag must be 0 or more"):
        Dependency("balances", max_lag=-1)


def test_a_projection_refuses_to_depend_on_itself_or_on_something_that_is_not_a_dependency() -> (
    None
):
    with pytest.raises(ConfigurationError, match="cannot depend on its own group"):
        Projection("reports", depends_on=[Dependency("reports")])
    with pytest.raises(ConfigurationError, match="depends_on takes Dependency"):
        Projection("reports", depends_on=["balances"])  # type: ignore[list-item]


def test_pause_callbacks_must_be_plain_functions() -> None:
    async def notify(reason: str) -> None: ...

    with pytest.raises(ConfigurationError, match="must be a plain function, not async"):
        Projection("reports", depends_on=[Dependency("balances")], on_pause=notify)  # type: ignore[arg-type]


# -- what the gate admits -----------------------------------------------------------------------


def test_the_gate_admits_the_prefix_below_the_frontier() -> None:
    gate = open_gate(frontier=5)

    assert positions(gate.admissible(events_at(1, 3, 4, 5, 6))) == [1, 3, 4]
    assert positions(gate.admissible(events_at(5, 6))) == []
    assert positions(gate.admissible(events_at(2, 4))) == [2, 4]


def test_nothing_is_admitted_before_the_first_measurement_or_while_paused() -> None:
    gate = DependencyGate(_never_measured, group="reports")
    assert positions(gate.admissible(events_at(1))) == []

    gate.update([Upstream("balances", 100, pause="upstream balances not running")])
    assert gate.paused
    assert positions(gate.admissible(events_at(1, 2))) == []


def test_the_frontier_of_several_dependencies_is_the_lowest_and_any_pause_pauses() -> None:
    gate = open_gate(frontier=1)
    gate.update([Upstream("balances", 10), Upstream("ledger", 4)])
    assert (gate.frontier, gate.paused) == (4, False)

    gate.update([Upstream("balances", 10), Upstream("ledger", 12, pause="ledger is behind")])
    assert (gate.frontier, gate.pause_reason) == (10, "ledger is behind")


@pytest.mark.anyio
async def test_admit_waits_until_the_frontier_passes_the_first_event() -> None:
    gate = open_gate(frontier=3)
    admitted: list[list[int]] = []

    async def admit() -> None:
        admitted.append(positions(await gate.admit(events_at(4, 5, 9))))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(admit)
            await anyio.wait_all_tasks_blocked()
            assert admitted == []
            gate.update([Upstream("balances", 6)])

    assert admitted == [[4, 5]]


@pytest.mark.anyio
async def test_admit_waits_while_paused_even_below_the_frontier() -> None:
    gate = open_gate(frontier=100)
    gate.update([Upstream("balances", 100, pause="upstream balances not running")])
    admitted: list[list[int]] = []

    async def admit() -> None:
        admitted.append(positions(await gate.admit(events_at(1, 2))))

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(admit)
            await anyio.wait_all_tasks_blocked()
            assert admitted == []
            gate.update([Upstream("balances", 100)])

    assert admitted == [[1, 2]]


# -- reporting pauses ---------------------------------------------------------------------------


def test_pauses_and_resumes_are_logged_and_reported_once_per_transition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    calls: list[tuple[str, str]] = []
    gate = open_gate(
        frontier=1,
        on_pause=[lambda reason: calls.append(("paused", reason))],
        on_resume=[lambda reason: calls.append(("resumed", reason))],
    )

    gate.update([Upstream("balances", 1, pause="upstream balances not running")])
    gate.update([Upstream("balances", 1, pause="upstream balances not running")])
    gate.update([Upstream("balances", 5)])
    gate.update([Upstream("balances", 9)])

    assert calls == [
        ("paused", "upstream balances not running"),
        ("resumed", "upstream balances not running"),
    ]
    logged = [
        (r.__dict__["action"], r.__dict__["reason"])
        for r in caplog.records
        if getattr(r, "action", "").startswith("dependency_")
    ]
    assert logged == [
        ("dependency_paused", "upstream balances not running"),
        ("dependency_resumed", "upstream balances not running"),
    ]


def test_a_failing_callback_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    called: list[str] = []

    def broken(reason: str) -> None:
        raise RuntimeError("the pager is down")

    gate = open_gate(frontier=1, on_pause=[broken, called.append])
    gate.update([Upstream("balances", 1, pause="upstream balances has not started")])

    assert called == ["upstream balances has not started"]
    [failure] = [
        r for r in caplog.records if getattr(r, "action", None) == "dependency_callback_failed"
    ]
    assert failure.exc_info is not None


@pytest.mark.anyio
async def test_the_gate_is_started_once_it_has_measured() -> None:
    readings = [[Upstream("balances", 7)], [Upstream("balances", 9)]]

    async def measure() -> list[Upstream]:
        return readings.pop(0) if len(readings) > 1 else readings[0]

    gate = DependencyGate(measure, group="reports", poll=0.01)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            await tasks.start(gate.run)
            assert gate.frontier in (7, 9)
            admitted = await gate.admit(events_at(8, 9))
            tasks.cancel_scope.cancel()

    assert positions(admitted) == [8]


# -- a source behind a gate ---------------------------------------------------------------------


class Store:
    """Reads from a fixed list of events, ``batch_size`` at a time."""

    def __init__(self, events: list[Event]) -> None:
        self.events = events
        self.reads: list[int] = []

    async def read_category(self, category: str, position: int, batch_size: int) -> Read:
        self.reads.append(position)
        found = [e for e in self.events if e.global_position >= position][:batch_size]
        return Read(found, found[-1].global_position + 1 if found else position)


class Submissions:
    """A sink that completes every batch at once and records what it was given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.handled: list[int] = []  # the positions it was told of, as a lane reports them

    async def submit(self, events: Sequence[Event], position: int) -> None:
        self.batches.append(positions(events))
        self.handled.append(position)


@pytest.mark.anyio
async def test_a_source_submits_only_what_the_gate_admits_in_global_order() -> None:
    store, sink = Store(events_at(1, 2, 4, 6, 7, 8)), Submissions()
    handled = sink.handled
    gate = open_gate(frontier=5)
    source = CategorySource(
        store,
        sink,
        "invoice",
        position=1,
        batch_size=10,
        tail_sleep=0.01,
        gate=gate,
    )

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(source.run)
            await anyio.wait_all_tasks_blocked()
            # The rest of the read waits at the gate; the position is at its first event.
            assert (sink.batches, handled, source.position) == ([[1, 2, 4]], [6], 6)
            gate.update([Upstream("balances", 8)])
            await anyio.wait_all_tasks_blocked()
            assert sink.batches == [[1, 2, 4], [6, 7]]
            gate.update([Upstream("balances", 100)])
            await source.reached_tail.wait()
            tasks.cancel_scope.cancel()

    assert sink.batches == [[1, 2, 4], [6, 7], [8]]
    assert handled == [6, 8, 9]
    # The held events were submitted from the first read, not read again.
    assert store.reads[:2] == [1, 9]


@pytest.mark.anyio
async def test_health_says_why_a_runner_is_paused_without_failing_it() -> None:
    health = Health(max_db_age=30, ready_max_lag=100)
    health.state = State.RUNNING
    health.database_answered(anyio.current_time(), 0.0)

    health.dependency_paused("upstream balances not running")
    liveness = health.liveness()
    assert (liveness.ok, liveness.details["paused"]) == (True, "upstream balances not running")
    assert health.readiness().details["paused"] == "upstream balances not running"

    health.dependency_resumed("upstream balances not running")
    assert "paused" not in health.liveness().details
