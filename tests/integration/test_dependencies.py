"""Dependencies in-process on real Postgres: a downstream group ("down", reading invoices) waits
for its upstream group ("up", reading accounts) in global order, pauses while the upstream is
stopped or too far behind, and resumes by itself."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from projector import Event, Projection
from projector.model.dependencies import Dependency
from projector.runtime.dependencies import DependencyGate, Upstream
from tests.support.failures import category_positions
from tests.support.groups import group_checkpoints
from tests.support.projecting import Recorder, run_projection, settings_for, write_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

UPSTREAM, DOWNSTREAM = "up", "down"
ACCOUNT, INVOICE = "account", "invoice"
WITHIN = 10.0  # seconds any wait in these tests may take before it fails


def _streams(category: str, count: int, *, events: int, first: int = 0) -> dict[str, int]:
    return {f"{category}-{i}": events for i in range(first, first + count)}


def _dependent(recorder: Recorder, dependency: Dependency, **callbacks: Any) -> Projection:
    """The recorder's projection, depending on ``dependency``."""
    recording = recorder.projection()

    async def handle(stream_name: str, events: list[Event]) -> None:
        await recording.handle(stream_name, events)

    return Projection(recorder.name, depends_on=[dependency], handler=handle, **callbacks)


@asynccontextmanager
async def _running(
    projection: Projection, url: str, category: str, **settings: Any
) -> AsyncIterator[None]:
    """A runner of ``projection`` over ``category`` in the background, for the block."""
    async with anyio.create_task_group() as tasks:
        values = {"categories": (category,), "until_caught_up": False, **settings}
        tasks.start_soon(run_projection, projection, settings_for(url, **values))
        yield
        tasks.cancel_scope.cancel()


def _measurements(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the gate was paused after each of its measurements from now on."""
    paused_after: list[bool] = []
    update = DependencyGate.update

    def measured(gate: DependencyGate, readings: Sequence[Upstream]) -> None:
        update(gate, readings)
        paused_after.append(gate.paused)

    monkeypatch.setattr(DependencyGate, "update", measured)
    return paused_after


def _actions(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.__dict__["action"], r.__dict__["reason"])
        for r in caplog.records
        if r.__dict__.get("action") in {"dependency_paused", "dependency_resumed"}
    ]


async def test_a_downstream_never_handles_an_event_before_its_upstream_handled_all_before_it(
    database_url: str,
) -> None:
    await write_events(
        database_url,
        _streams(ACCOUNT, 40, events=5) | _streams(INVOICE, 40, events=5),
        writers=2,
    )
    # Then one account event the upstream holds until the downstream has handled something,
    # and invoices after it, which the downstream must not handle before the upstream does.
    await write_events(database_url, {f"{ACCOUNT}-last": 1})
    await write_events(database_url, _streams(INVOICE, 10, events=2, first=40))
    accounts = await category_positions(database_url, ACCOUNT)
    invoices = await category_positions(database_url, INVOICE)
    upstream = Recorder(UPSTREAM, delay=0.01)
    recording = upstream.projection()
    downstream_started = anyio.Event()
    passed: list[tuple[int, int]] = []  # (downstream event, first upstream event unhandled)
    handled: list[int] = []
    calls_while_upstream_busy = 0

    async def hold_the_last(stream_name: str, events: list[Event]) -> None:
        if stream_name == f"{ACCOUNT}-last":
            await downstream_started.wait()
        await recording.handle(stream_name, events)

    async def check(stream_name: str, events: list[Event]) -> None:
        nonlocal calls_while_upstream_busy
        done = set(upstream.global_positions)
        unhandled = next((g for g in accounts if g not in done), None)
        if unhandled is not None:
            calls_while_upstream_busy += 1
            passed.extend(
                (e.global_position, unhandled) for e in events if e.global_position > unhandled
            )
        handled.extend(e.global_position for e in events)
        downstream_started.set()

    held = Projection(UPSTREAM, handler=hold_the_last)
    downstream = Projection(DOWNSTREAM, depends_on=[Dependency(UPSTREAM)], handler=check)
    upstream_settings = {"batch_size": 20, "max_concurrent_streams": 2}
    async with _running(held, database_url, ACCOUNT, **upstream_settings):
        with anyio.fail_after(WITHIN):
            await run_projection(
                downstream, settings_for(database_url, categories=(INVOICE,), batch_size=50)
            )

    assert passed == []
    assert sorted(handled) == invoices
    # The downstream ran while the upstream had not handled everything: the gate, not the
    # timing, kept it behind.
    assert calls_while_upstream_busy > 0


async def test_a_downstream_waits_for_every_member_of_a_consumer_group_upstream(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, _streams(ACCOUNT, 30, events=4) | _streams(INVOICE, 30, events=4))
    accounts = await category_positions(url, ACCOUNT)
    members = {0: Recorder(UPSTREAM, delay=0.01), 1: Recorder(UPSTREAM, delay=0.03)}
    passed: list[int] = []
    downstream = Recorder(DOWNSTREAM)
    recording = downstream.projection()

    async def check(stream_name: str, events: list[Event]) -> None:
        done = {g for member in members.values() for g in member.global_positions}
        unhandled = next((g for g in accounts if g not in done), None)
        if unhandled is not None:
            passed.extend(e.global_position for e in events if e.global_position > unhandled)
        await recording.handle(stream_name, events)

    async with anyio.create_task_group() as tasks:
        for member, recorder in members.items():
            values = {"member": member, "group_size": 2}
            settings = settings_for(
                url, categories=(ACCOUNT,), until_caught_up=False, batch_size=20, **values
            )
            tasks.start_soon(run_projection, recorder.projection(), settings)
        dependent = Projection(DOWNSTREAM, depends_on=[Dependency(UPSTREAM)], handler=check)
        with anyio.fail_after(WITHIN):
            await run_projection(dependent, settings_for(url, categories=(INVOICE,)))
        tasks.cancel_scope.cancel()

    assert passed == []
    assert downstream.handled == 30 * 4


async def test_an_idle_upstream_at_its_tail_does_not_hold_the_downstream_back(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, _streams(ACCOUNT, 10, events=2) | _streams(INVOICE, 10, events=2))
    upstream, downstream = Recorder(UPSTREAM), Recorder(DOWNSTREAM)
    async with _running(upstream.projection(), url, ACCOUNT):
        await eventually(lambda: upstream.handled == 20, within=WITHIN)
        async with _running(_dependent(downstream, Dependency(UPSTREAM)), url, INVOICE):
            await eventually(lambda: downstream.handled == 20, within=WITHIN)
            # Written after every account event: the upstream has nothing to do for them.
            await write_events(url, _streams(INVOICE, 5, events=2, first=10))
            await eventually(lambda: downstream.handled == 30, within=WITHIN)

    assert upstream.handled == 20


async def test_a_downstream_pauses_while_its_upstream_is_stopped_and_resumes_when_it_runs(
    own_store_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="projector")
    url = own_store_url
    await write_events(url, _streams(ACCOUNT, 10, events=2) | _streams(INVOICE, 10, events=2))
    await run_projection(Recorder(UPSTREAM).projection(), settings_for(url, categories=(ACCOUNT,)))
    # The upstream is stopped now, with work waiting for it.
    await write_events(url, _streams(ACCOUNT, 5, events=2, first=10))
    pauses: list[str] = []
    resumes: list[str] = []
    downstream = Recorder(DOWNSTREAM)
    dependent = _dependent(
        downstream, Dependency(UPSTREAM), on_pause=pauses.append, on_resume=resumes.append
    )

    paused_after = _measurements(monkeypatch)
    async with _running(dependent, url, INVOICE):
        await eventually(lambda: pauses == ["upstream up not running"], within=WITHIN)
        measured = len(paused_after)
        await eventually(lambda: len(paused_after) >= measured + 2, within=WITHIN)
        assert paused_after[measured:] == [True] * (len(paused_after) - measured)
        assert downstream.handled == 0
        upstream = Recorder(UPSTREAM)
        async with _running(upstream.projection(), url, ACCOUNT):
            await eventually(lambda: downstream.handled == 20, within=WITHIN)
            assert upstream.handled == 10

    assert pauses == resumes == ["upstream up not running"]
    assert _actions(caplog) == [
        ("dependency_paused", "upstream up not running"),
        ("dependency_resumed", "upstream up not running"),
    ]


async def test_a_downstream_pauses_until_its_upstream_has_started(own_store_url: str) -> None:
    url = own_store_url
    await write_events(url, _streams(INVOICE, 5, events=2))
    pauses: list[str] = []
    downstream = Recorder(DOWNSTREAM)

    async with _running(
        _dependent(downstream, Dependency(UPSTREAM), on_pause=pauses.append),
        url,
        INVOICE,
    ):
        await eventually(lambda: pauses == ["upstream up has not started"], within=WITHIN)
        assert downstream.handled == 0
        async with _running(Recorder(UPSTREAM).projection(), url, ACCOUNT):
            await eventually(lambda: downstream.handled == 10, within=WITHIN)


async def test_a_downstream_pauses_while_its_upstream_lags_more_than_max_lag(
    own_store_url: str,
) -> None:
    url = own_store_url
    await write_events(url, _streams(ACCOUNT, 50, events=2) | _streams(INVOICE, 5, events=2))
    release, entered = anyio.Event(), anyio.Event()
    upstream = Projection(UPSTREAM)

    @upstream.handler
    async def slow(stream_name: str, events: list[Event]) -> None:
        entered.set()
        await release.wait()

    pauses: list[str] = []
    resumes: list[str] = []
    downstream = Recorder(DOWNSTREAM)
    dependent = _dependent(
        downstream,
        Dependency(UPSTREAM, max_lag=20),
        on_pause=pauses.append,
        on_resume=resumes.append,
    )
    behind = "upstream up is more than 20 events behind (max_lag)"

    async with _running(upstream, url, ACCOUNT):
        with anyio.fail_after(WITHIN):
            await entered.wait()
        assert await group_checkpoints(url, UPSTREAM)  # started: only its lag can pause us
        async with _running(dependent, url, INVOICE):
            await eventually(lambda: pauses == [behind], within=WITHIN)
            assert downstream.handled == 0
            release.set()
            await eventually(lambda: downstream.handled == 10, within=WITHIN)

    assert resumes == [behind]
