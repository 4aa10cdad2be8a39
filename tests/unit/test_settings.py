"""Settings come from flags, then PROJECTOR_* variables, then .env, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from docgen import reference
from projector.cli.options import option_for
from projector.errors import ConfigurationError, InvalidNameError
from projector.process import backend_options
from projector.settings import (
    DEPRECATED_ENV,
    INVERTED_ENV,
    Settings,
    load_settings,
    value_range,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"PROJECTOR_{name.upper()}", raising=False)
    for name in (*DEPRECATED_ENV, *INVERTED_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings()

    assert settings.batch_size == 500
    assert settings.tail_sleep == 0.1
    assert settings.max_concurrent_streams == 10
    assert settings.max_read_ahead == 3
    assert settings.checkpoint_interval == 5.0
    assert settings.categories == ()
    assert settings.database_url is None
    assert settings.metrics_host == "127.0.0.1"  # /metrics has no authentication


def test_flags_win_over_the_environment_which_wins_over_dotenv(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    (clean_environment / ".env").write_text(
        "PROJECTOR_BATCH_SIZE=11\nPROJECTOR_TAIL_SLEEP=0.5\nPROJECTOR_GROUP=from_dotenv\n"
    )
    monkeypatch.setenv("PROJECTOR_BATCH_SIZE", "22")
    monkeypatch.setenv("PROJECTOR_TAIL_SLEEP", "0.25")

    settings = load_settings(batch_size=33, tail_sleep=None)

    assert settings.batch_size == 33
    assert settings.tail_sleep == 0.25
    assert settings.group == "from_dotenv"


def test_categories_are_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROJECTOR_CATEGORIES", "account, invoice:command ,")

    assert load_settings().categories == ("account", "invoice:command")


def test_durations_are_decimal_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECTOR_CHECKPOINT_INTERVAL", "0.2")

    assert load_settings(tail_sleep="0.05").checkpoint_interval == 0.2


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"batch_size": 0}, "--batch-size / PROJECTOR_BATCH_SIZE"),
        ({"max_concurrent_streams": 0}, "--max-concurrent-streams"),
        ({"max_read_ahead": -1}, "PROJECTOR_MAX_READ_AHEAD"),
        ({"tail_sleep": 0}, "PROJECTOR_TAIL_SLEEP"),
        ({"checkpoint_interval": "soon"}, "PROJECTOR_CHECKPOINT_INTERVAL"),
        ({"log_level": "LOUD"}, "one of DEBUG, INFO, WARNING, ERROR"),
    ],
)
def test_an_out_of_range_setting_names_its_flag_and_variable(
    overrides: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigurationError, match="invalid") as caught:
        load_settings(**overrides)

    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "overrides",
    [{"categories": "account-1"}, {"categories": "a b"}, {"group": "g-1"}, {"group": ""}],
)
def test_unsafe_category_and_group_names_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidNameError):
        load_settings(**overrides)


def test_every_bounded_setting_gives_its_range_in_the_docs_table_and_its_help() -> None:
    table = {row.env: row.range for row in reference.settings()}

    for name in Settings.model_fields:
        bounds = value_range(name)
        if bounds is not None:
            assert table[f"PROJECTOR_{name.upper()}"] == bounds, name
            assert bounds in option_for(name)(lambda: None).__click_params__[0].help  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_duration_must_be_a_finite_number(value: str) -> None:
    with pytest.raises(ConfigurationError, match="finite number"):
        load_settings(outage_limit=value)


def test_runs_use_uvloop_unless_asked_for_plain_asyncio(clean_environment: Path) -> None:
    assert backend_options(load_settings()) == {"use_uvloop": True}
    assert backend_options(load_settings(event_loop="asyncio")) == {"use_uvloop": False}
    with pytest.raises(ConfigurationError, match="--event-loop"):
        load_settings(event_loop="trio")


def test_old_spellings_still_work_and_say_what_replaces_them(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PROJECTOR_CONSUMER_GROUP_MEMBER", "1")
    monkeypatch.setenv("PROJECTOR_CONSUMER_GROUP_SIZE", "3")
    monkeypatch.setenv("PROJECTOR_NO_STANDBY", "1")
    monkeypatch.setenv("PROJECTOR_NO_PROGRESS", "true")

    settings = load_settings()

    assert (settings.member, settings.group_size) == (1, 3)
    assert (settings.standby, settings.progress) == (False, False)
    replaced = {r.__dict__["old"]: r.__dict__["new"] for r in caplog.records}
    assert replaced == {
        "PROJECTOR_CONSUMER_GROUP_MEMBER": "PROJECTOR_MEMBER",
        "PROJECTOR_CONSUMER_GROUP_SIZE": "PROJECTOR_GROUP_SIZE",
        "PROJECTOR_NO_STANDBY": "PROJECTOR_STANDBY=false",
        "PROJECTOR_NO_PROGRESS": "PROJECTOR_PROGRESS=false",
    }


def test_the_new_names_win_and_a_member_needs_its_group_size(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    monkeypatch.setenv("PROJECTOR_MEMBER", "2")
    monkeypatch.setenv("PROJECTOR_GROUP_SIZE", "4")
    assert (load_settings().member, load_settings().group_size) == (2, 4)
    assert load_settings(standby=False).standby is False

    monkeypatch.delenv("PROJECTOR_GROUP_SIZE")
    with pytest.raises(ConfigurationError, match="needs both --member"):
        load_settings()
