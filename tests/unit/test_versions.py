"""A projection's versions without a database: their groups and schemas, what
`projector.replaying()` answers in a run's tasks, and how a version's readiness and time to
catch up are read from its members' status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from projector import Projection, replaying
from projector.admin.rebuild_status import VersionStatus, _eta
from projector.admin.status import MemberStatus
from projector.errors import ConfigurationError
from projector.model.versions import Replaying, Version, VersionState, answering

pytestmark = pytest.mark.anyio


async def _setup(conn: object) -> None: ...


def test_version_1_keeps_the_projections_name_as_its_group_and_later_ones_are_suffixed() -> None:
    assert (Projection("balances").group, Projection("balances").schema) == ("balances", None)
    first = Projection("balances", setup=_setup)
    assert (first.group, first.schema) == ("balances", "balances_v1")
    second = Projection("balances", version=2, setup=_setup)
    assert (second.group, second.schema) == ("balances_v2", "balances_v2")
    assert repr(second) == "Projection('balances', version=2)"


@pytest.mark.parametrize("version", [0, -1, True, 1.5])
def test_a_version_is_a_whole_number_from_1(version: object) -> None:
    with pytest.raises(ConfigurationError, match="version"):
        Projection("balances", version=version)  # type: ignore[arg-type]


def test_a_schema_name_past_postgresqls_limit_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="63 bytes"):
        Projection("b" * 62, version=2, setup=_setup)


async def test_handlers_see_the_runs_replaying_state_change_as_the_runner_sets_it() -> None:
    assert not replaying()
    holder = Replaying(True)
    seen: list[bool] = []
    step = anyio.Event()

    async def handler() -> None:
        seen.append(replaying())
        await step.wait()
        seen.append(replaying())

    with answering(holder):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(handler)
            await anyio.wait_all_tasks_blocked()
            holder.value = False  # the version went live
            step.set()
    assert seen == [True, False]
    assert not replaying()


def _member(checkpoint: int, head: int | None, lag: int, *, running: bool = True) -> MemberStatus:
    now = datetime.now(UTC)
    return MemberStatus("balances_v2", 0, 1, "account", checkpoint, head, lag, 1.0, now, running)


def _status(**fields: object) -> VersionStatus:
    version = Version("balances", 2, "balances_v2", "balances_v2", VersionState.BUILDING,
                      datetime.now(UTC))
    values: dict[str, object] = {
        "recorded": True,
        "lag_events": 0,
        "lag_seconds": 0.0,
        "running": True,
        "members": 1,
        "retrying": 0,
        "parked": 0,
        "eta_seconds": 0.0,
    }
    values.update(fields)
    return VersionStatus(version, **values)  # type: ignore[arg-type]


def test_a_version_is_ready_once_it_ran_every_member_runs_nothing_fails_and_it_is_close() -> None:
    assert "no checkpoint" in (_status(lag_events=None).not_ready(100) or "")
    assert "no runner up" in (_status(running=False).not_ready(100) or "")
    assert "failing" in (_status(parked=1).not_ready(100) or "")
    assert "lags 101 events" in (_status(lag_events=101).not_ready(100) or "")
    assert _status(lag_events=100).not_ready(100) is None


def test_the_time_to_catch_up_follows_the_slowest_members_pace_since_it_started() -> None:
    ten_seconds_ago = datetime.now(UTC) - timedelta(seconds=10)
    # 1,000 global positions in 10 s: 100 a second, with 500 to go.
    eta = _eta([_member(1_001, 1_500, 400), _member(1_401, 1_500, 99)], ten_seconds_ago)
    assert eta == pytest.approx(5.0, rel=0.05)
    assert _eta([_member(1_501, 1_500, 0)], None) == 0.0
    assert _eta([_member(1_001, 1_500, 400)], None) is None
