"""Setting and resetting checkpoints as an operator does, through the `projector checkpoints`
commands (in-process), and what a runner says about a checkpoint or a category that looks
wrong: nothing is skipped without being asked for."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import anyio
import psycopg
import pytest
from click.testing import CliRunner, Result

from projector.admin import groups
from projector.cli import main
from projector.errors import ConfigurationError
from projector.storage.database import Connection
from tests.support.failures import append
from tests.support.projecting import Recorder, checkpoint, run_projection, settings_for


def projector(url: str, *args: str, stdin: str = "") -> Result:
    return CliRunner().invoke(main, [*args, "--database-url", url], input=stdin)


def _write(url: str, stream_name: str, count: int) -> list[int]:
    return anyio.run(append, url, stream_name, count)


def test_a_checkpoint_past_the_head_is_refused_naming_the_head_unless_forced(
    own_store_url: str,
) -> None:
    last = _write(own_store_url, "weird-1", 3)[-1]
    asked = ("checkpoints", "set", "--group", "probe", "--create", "--category", "weird")

    refused = projector(own_store_url, *asked, "--position", "999999")
    unchanged = anyio.run(checkpoint, own_store_url, "probe", "weird")
    forced = projector(own_store_url, *asked, "--position", "999999", "--force")

    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1
    assert f"past the head of category 'weird', which ends at {last}" in refused.stderr
    assert f"at most {last + 1} (or --to-head)" in refused.stderr
    assert unchanged is None
    assert forced.exit_code == 0, forced.output
    assert anyio.run(checkpoint, own_store_url, "probe", "weird") == 999999


def test_to_head_skips_what_was_written_and_to_time_replays_what_was_written_since(
    own_store_url: str,
) -> None:
    before = _write(own_store_url, "weird-1", 2)
    since = datetime.now(UTC)
    after = _write(own_store_url, "weird-2", 2)
    asked = ("checkpoints", "set", "--group", "probe", "--create", "--category", "weird")

    to_head = projector(own_store_url, *asked, "--to-head")
    head = anyio.run(checkpoint, own_store_url, "probe", "weird")
    to_time = projector(own_store_url, *asked, "--to-time", since.isoformat())
    replay = anyio.run(checkpoint, own_store_url, "probe", "weird")
    future = projector(own_store_url, *asked, "--to-time", (since + timedelta(days=1)).isoformat())
    neither = projector(own_store_url, *asked)

    assert to_head.exit_code == 0, to_head.output
    assert head == after[-1] + 1
    assert to_time.exit_code == 0, to_time.output
    assert replay == after[0]
    assert replay > before[-1]
    assert future.exit_code == 0, future.output
    assert anyio.run(checkpoint, own_store_url, "probe", "weird") == after[-1] + 1
    assert neither.exit_code == 2
    assert "give one of --position N, --to-head or --to-time TIME" in neither.stderr


def test_a_time_that_is_not_iso_8601_is_refused_in_one_line(own_store_url: str) -> None:
    asked = ("checkpoints", "set", "--group", "probe", "--create", "--category", "weird")

    done = projector(own_store_url, *asked, "--to-time", "yesterday")

    assert done.exit_code == 2
    assert "'yesterday' is not an ISO 8601 time" in done.stderr


def test_resetting_one_category_keeps_the_groups_other_checkpoints(own_store_url: str) -> None:
    for category in ("weird", "other"):
        position = _write(own_store_url, f"{category}-1", 1)[0]
        done = projector(
            own_store_url,
            *("checkpoints", "set", "--group", "probe", "--create", "--category", category),
            *("--position", str(position)),
        )
        assert done.exit_code == 0, done.output

    reset = projector(
        own_store_url, "checkpoints", "reset", "--group", "probe", "--category", "weird", "--yes"
    )

    assert reset.exit_code == 0, reset.output
    assert reset.output == "deleted 1 checkpoint(s) of group probe\n"
    assert anyio.run(checkpoint, own_store_url, "probe", "weird") is None
    assert anyio.run(checkpoint, own_store_url, "probe", "other") is not None


def test_a_runner_warns_of_a_checkpoint_past_the_head_and_of_an_empty_category(
    own_store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="projector")
    last = _write(own_store_url, "account-1", 2)[-1]
    with psycopg.connect(own_store_url) as conn:
        conn.execute(
            "INSERT INTO projector.checkpoints (group_name, member, group_size, category, position)"
            " VALUES ('recorder', 0, 1, 'account', %s)",
            (last + 100,),
        )
    settings = settings_for(
        own_store_url, categories=("account", "Account"), require_events=False
    )

    anyio.run(run_projection, Recorder().projection(), settings)

    warned = {getattr(r, "action", None): r for r in caplog.records}
    assert warned["checkpoint_past_head"].__dict__["head"] == last
    assert warned["category_empty"].__dict__["category"] == "Account"


def test_require_events_refuses_an_empty_category(own_store_url: str) -> None:
    _write(own_store_url, "account-1", 1)
    settings = settings_for(own_store_url, categories=("Account",), require_events=True)

    with pytest.raises(ConfigurationError, match="category 'Account' has no events"):
        anyio.run(run_projection, Recorder().projection(), settings)


def test_until_caught_up_refuses_a_category_with_no_events_and_writes_no_checkpoint(
    own_store_url: str,
) -> None:
    _write(own_store_url, "account-1", 1)
    settings = settings_for(own_store_url, categories=("account", "acount"), until_caught_up=True)

    with pytest.raises(ConfigurationError, match="category 'acount' has no events"):
        anyio.run(run_projection, Recorder().projection(), settings)

    assert anyio.run(checkpoint, own_store_url, "recorder", "account") is None
    assert anyio.run(checkpoint, own_store_url, "recorder", "acount") is None


def test_a_typo_in_a_group_name_does_not_create_a_group(own_store_url: str) -> None:
    _write(own_store_url, "weird-1", 1)
    asked = ("checkpoints", "set", "--group", "probe", "--category", "weird", "--position", "1")

    refused = projector(own_store_url, *asked)
    unchanged = anyio.run(checkpoint, own_store_url, "probe", "weird")
    created = projector(own_store_url, *asked, "--create")
    listed = projector(own_store_url, "checkpoints", "list")

    assert refused.exit_code == 2
    assert "group 'probe' has no checkpoints: check the name" in refused.stderr
    assert "--create" in refused.stderr
    assert unchanged is None
    assert created.exit_code == 0, created.output
    assert anyio.run(checkpoint, own_store_url, "probe", "weird") == 1
    # The table's names are the JSON's: the checkpoint is the next position to read.
    assert listed.stdout.split("\n")[0].split() == [
        *("group", "member", "category", "checkpoint", "size", "last", "written")
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (partial(groups.rebalance, group="g", size=99_999_999, dry_run=True), "1 to 10,000"),
        (partial(groups.convert_to_elastic, group="g", bucket_count=0, dry_run=True), "1 to"),
        (partial(groups.set_checkpoint, group="g", category="c", position=2**63), "out of range"),
        (partial(groups.set_checkpoint, group="g", category="c", position=1, member=-1), "0 to"),
    ],
)
@pytest.mark.anyio
async def test_administration_refuses_sizes_and_positions_out_of_range_before_any_lock(
    own_store_conn: Connection, change: Callable[..., Awaitable[object]], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        await change(own_store_conn)
