"""How `projector status` shows its figures: the table for people and the JSON for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from projector.admin.status import MemberStatus, to_json
from projector.cli.render import COLUMNS, human_duration, status_table

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


def member(**changes: object) -> MemberStatus:
    values: dict[str, object] = {
        "group": "balances",
        "member": 1,
        "size": 3,
        "category": "account",
        "checkpoint": 120,
        "head": 190,
        "lag_events": 25,
        "lag_seconds": 192.5,
        "last_written": NOW - timedelta(seconds=5),
        "running": True,
    }
    values.update(changes)
    return MemberStatus(**values)  # type: ignore[arg-type]


def text_of(rows: list[MemberStatus], *, width: int = 120) -> str:
    console = Console(width=width, color_system=None)
    with console.capture() as captured:
        console.print(status_table(rows, now=NOW))
    return captured.get()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-2.0, "<1s"),
        (0.4, "<1s"),
        (1.0, "1s"),
        (59.9, "59s"),
        (60.0, "1m00s"),
        (192.5, "3m12s"),
        (3_600 + 5 * 60 + 7, "1h05m"),
        (3 * 86_400 + 4 * 3_600, "3d04h"),
    ],
)
def test_durations_are_short_and_never_negative(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_the_table_shows_a_member_by_its_checkpoint_name_with_its_figures() -> None:
    header, row = text_of([member()]).splitlines()

    assert header.split() == " ".join(c for c in COLUMNS if c not in {"retrying", "parked"}).split()
    assert row.split() == [
        "balances-1",
        "account",
        "120",
        "190",
        "25",
        "3m12s",
        "5s",
        "ago",
        "running",
    ]


def test_a_caught_up_stopped_plain_group_shows_dashes_for_what_it_lacks() -> None:
    row = member(member=0, size=1, head=None, lag_events=0, lag_seconds=None, running=False)

    assert text_of([row]).splitlines()[1].split() == [
        "balances",
        "account",
        "120",
        "-",
        "0",
        "-",
        "5s",
        "ago",
        "stopped",
    ]


def test_names_and_figures_are_not_cut_on_an_80_column_terminal() -> None:
    row = member(group="shop.balances", category="account.ledger", checkpoint=123_456_789)

    text = text_of([row], width=80)

    for value in ("shop.balances-1", "account.ledger", "123456789", "3m12s", "running"):
        assert value in text


def test_parked_streams_show_with_the_age_of_the_oldest() -> None:
    row = member(parked=2, oldest_parked_at=NOW - timedelta(minutes=3))

    header, line, *caption = text_of([row], width=200).splitlines()
    assert header.split()[-3:] == ["retrying", "parked", "runner"]
    assert line.split()[-3:] == ["0", "2", "running"]
    assert "2 parked stream(s), their events not handled; the oldest failing since 3m00s ago " in (
        " ".join(caption)
    )
    assert json.loads(to_json([row]))["oldest_parked_at"] == (
        "2026-11-24T11:57:00+00:00"
    )


def test_retrying_streams_show_when_their_next_attempt_is_due() -> None:
    row = member(retrying=3, next_attempt_at=NOW + timedelta(seconds=42))

    _, line, *caption = text_of([row], width=200).splitlines()
    assert line.split()[-3:] == ["3", "0", "running"]
    assert "3 retrying stream(s), their events not handled until they succeed; the next " in (
        " ".join(caption)
    )
    assert "attempt in 42s in balances-1/account" in " ".join(" ".join(caption).split())
    assert json.loads(to_json([row]))["next_attempt_at"] == "2026-11-24T12:00:42+00:00"


def test_an_empty_status_says_why_it_is_empty() -> None:
    assert "no checkpoints" in text_of([])


def test_json_is_one_object_per_line_of_machine_fields() -> None:
    rows = [member(), member(member=2, head=None, lag_events=0, lag_seconds=None, running=False)]

    lines = [json.loads(line) for line in to_json(rows).splitlines()]

    assert lines[0] == {
        "name": "balances-1",
        "group": "balances",
        "member": 1,
        "size": 3,
        "category": "account",
        "checkpoint": 120,
        "head": 190,
        "lag_events": 25,
        "lag_seconds": 192.5,
        "updated_at": "2026-11-24T11:59:55+00:00",
        "running": True,
        "retrying": 0,
        "next_attempt_at": None,
        "parked": 0,
        "oldest_parked_at": None,
    }
    assert lines[1]["head"] is None
    assert lines[1]["lag_seconds"] is None
    assert lines[1]["running"] is False
    assert to_json([]) == ""
