"""Every setting of projector, documented once, here.

Each has an environment variable ``PROJECTOR_<NAME>`` (also read from a ``.env`` file in the
working directory) and a ``--<name>`` flag on the commands that use it; flags win over the
environment, which wins over ``.env``, which wins over the defaults below.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from projector.errors import ConfigurationError
from projector.model.buckets import DEFAULT_BUCKETS, MAX_BUCKETS
from projector.model.events import MAX_GROUP_SIZE, validate_category, validate_group
from projector.model.failures import OnExhausted, RetryPolicy
from projector.storage.database import is_connection_string, url_ports

logger = logging.getLogger(__name__)

MAX_PORT = 65_535


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class EventLoop(enum.StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


class Settings(BaseSettings):
    """projector's settings; the docs' settings page is generated from this class."""

    # populate_by_name: flags and code give fields by name; the environment by the aliases.
    model_config = SettingsConfigDict(
        env_prefix="PROJECTOR_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        allow_inf_nan=False,  # nan passes every bound, inf would wait forever
    )

    database_url: str | None = Field(
        None, description="libpq URL of the database holding the message store"
    )
    group: str | None = Field(
        None, description="checkpoint group name (default: the projection's name)"
    )
    categories: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="categories to read, comma-separated (default: the projection's own)",
        json_schema_extra={"flag": "--category"},
    )
    member: int = Field(
        0,
        ge=0,
        le=MAX_GROUP_SIZE - 1,
        description="this process's member number in a consumer group (0 to group_size - 1)",
        validation_alias=AliasChoices("PROJECTOR_MEMBER", "PROJECTOR_CONSUMER_GROUP_MEMBER"),
    )
    group_size: int = Field(
        1,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="members in the consumer group; each takes its share of the streams",
        validation_alias=AliasChoices("PROJECTOR_GROUP_SIZE", "PROJECTOR_CONSUMER_GROUP_SIZE"),
    )
    elastic: bool = Field(
        False,
        description="join an elastic consumer group: lease buckets of streams, sharing them "
        "with whichever members are alive (no --member / --group-size)",
    )
    buckets: int = Field(
        DEFAULT_BUCKETS,
        ge=1,
        le=MAX_BUCKETS,
        description="buckets of an elastic group, set once when the group is created",
    )
    heartbeat: float = Field(
        0.5, gt=0, le=60, description="seconds between an elastic member's heartbeats"
    )
    bucket_lease: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds an elastic member keeps its buckets without a heartbeat before "
        "others may take them",
    )
    standby: bool = Field(
        True,
        description="wait as the member's hot standby when it already runs (--no-standby: exit)",
    )
    batch_size: int = Field(500, ge=1, le=100_000, description="events per read")
    tail_sleep: float = Field(
        0.1, gt=0, le=3600, description="seconds to sleep after a read finds nothing new"
    )
    max_concurrent_streams: int = Field(
        10,
        ge=1,
        le=10_000,
        description="handler calls running at once, across all streams (not batch handlers: "
        "see max_concurrent_batches)",
    )
    max_read_ahead: int = Field(
        3,
        ge=1,
        le=1_000,
        description="batches' worth of events (max_read_ahead x batch_size) per category read "
        "but not yet fully handled",
    )
    batch_max_streams: int = Field(
        500, ge=1, le=100_000, description="most stream spans in one batch handler call"
    )
    batch_linger: float = Field(
        0.0,
        ge=0,
        le=10,
        description="seconds a batch call waits for more streams when fewer than "
        "batch_max_streams are ready (0: it takes what is ready)",
    )
    max_concurrent_batches: int = Field(
        2,
        ge=1,
        le=1_000,
        description="batch handler calls running at once (a transactional batch holds a "
        "connection each)",
    )
    checkpoint_interval: float = Field(
        5.0, gt=0, le=3600, description="seconds between checkpoint commits (when moved)"
    )
    shutdown_timeout: float = Field(
        10.0, ge=0, le=3600, description="seconds a stop waits for running handler calls"
    )
    require_events: bool | None = Field(
        None,
        description="refuse to start when a category has no events (a typo'd name); unset: "
        "only with --until-caught-up",
    )
    from_tail: bool = Field(
        False, description="a group with no checkpoint starts at the tail, skipping history"
    )
    until_caught_up: bool = Field(
        False, description="exit 0 once every category is read to its tail and checkpointed"
    )
    on_failure: OnExhausted = Field(
        OnExhausted.PARK,
        description="when a stream's retries run out: park it (others go on) or stop the run",
    )
    retry_base: float = Field(
        0.5, gt=0, le=3600, description="seconds of the first retry delay (doubling, jittered)"
    )
    retry_cap: float = Field(60.0, gt=0, le=86_400, description="longest retry delay, seconds")
    retry_max_attempts: int = Field(
        8,
        ge=1,
        le=1_000,
        description="failed calls in a row (replays included) before a stream is parked/stops",
    )
    handler_timeout: float | None = Field(
        120.0, gt=0, le=86_400, description="seconds before a handler call is cancelled as failed"
    )
    stuck_after: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="seconds running or failing before a stream is reported stuck",
    )
    outage_limit: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="seconds the database may stay unreachable before projector exits",
    )
    start_wait: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="seconds a starting runner waits for a database that does not answer yet "
        "(a restart), logging reconnecting, before it exits 1; 0: not at all (a URL that "
        "cannot work, an unknown host or a refused login, fails at once)",
    )
    lease_timeout: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="seconds a silent runner (paused, frozen, cut off) keeps its member before "
        "the server drops its lock and a standby takes over (PostgreSQL 14+)",
    )
    pool_size: int = Field(
        4, ge=1, le=1_000, description="most database connections projector itself opens"
    )
    connect_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds to wait for a database connection"
    )
    event_loop: EventLoop = Field(
        EventLoop.UVLOOP,
        description="uvloop (less CPU per database round trip; asyncio where uvloop is not "
        "installed) or asyncio",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = Field(
        LogFormat.TEXT, description="text (human-readable lines) or json (one object per line)"
    )
    summary_interval: float = Field(
        30.0, ge=0, le=86_400, description="seconds between summary log lines (0: none)"
    )
    progress: bool = Field(
        True,
        description="draw a catch-up progress bar on an interactive terminal (--no-progress: "
        "never)",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=MAX_PORT, description="serve /metrics, /health and /ready on this port"
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the metrics port listens on (0.0.0.0: every interface, for a "
        "scraper or probe on another host)",
    )
    ready_max_lag: int = Field(
        100,
        ge=0,
        le=1_000_000_000,
        description="/ready answers 200 while every category lags at most this many events",
    )
    health_max_db_age: float = Field(
        30.0,
        gt=0,
        le=86_400,
        description="/health fails when no database round trip succeeded for this long",
    )

    @field_validator("categories", mode="before")
    @classmethod
    def _split_categories(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("categories")
    @classmethod
    def _check_categories(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_category(c) for c in value)

    @field_validator("group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        return None if value is None else validate_group(value)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, separator, _ = value.partition("://")
        if separator and scheme not in {"postgresql", "postgres"}:
            raise ValueError(
                f"it is a {scheme}:// URL, and projector needs PostgreSQL: give "
                "postgresql://user@host:5432/dbname"
            )
        if not is_connection_string(value):
            # Not libpq's reason: it would quote the URL, and with it any password.
            raise ValueError(
                "it is neither a postgresql:// URL nor libpq key=value settings: give "
                "postgresql://user@host:5432/dbname"
            )
        for port in url_ports(value):
            if not port.isdigit() or not 1 <= int(port) <= MAX_PORT:
                raise ValueError(f"its port {port!r} is not a port: give 1 to {MAX_PORT}")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return level

    @model_validator(mode="after")
    def _check_member(self) -> Settings:
        member, size, given = self.member, self.group_size, self.model_fields_set
        if ("member" in given) != ("group_size" in given):
            raise ConfigurationError(
                "a consumer group member needs both --member (PROJECTOR_MEMBER) and "
                "--group-size (PROJECTOR_GROUP_SIZE)"
            )
        if member >= size:
            raise ConfigurationError(
                f"--member {member} is out of range for --group-size {size}: "
                f"members are numbered 0 to {size - 1}"
            )
        return self

    @model_validator(mode="after")
    def _check_elastic(self) -> Settings:
        given = self.model_fields_set
        if self.elastic and given & {"member", "group_size"}:
            raise ConfigurationError(
                "--elastic members share the buckets among themselves: drop --member and "
                "--group-size (or drop --elastic for a fixed group)"
            )
        if not self.elastic and "buckets" in given:
            raise ConfigurationError("--buckets is for elastic groups: add --elastic, or drop it")
        if self.elastic and self.heartbeat * 2 > self.bucket_lease:
            raise ConfigurationError(
                f"--heartbeat {self.heartbeat:g} is too long for --bucket-lease "
                f"{self.bucket_lease:g}: give a heartbeat at most half the lease"
            )
        return self


def retry_policy(settings: Settings, default: RetryPolicy | None) -> RetryPolicy:
    """The projection's own policy (or the defaults), with the settings the user gave on top."""
    base = default or RetryPolicy(
        settings.retry_base, settings.retry_cap, settings.retry_max_attempts, settings.on_failure
    )
    given = settings.model_fields_set
    return RetryPolicy(
        settings.retry_base if "retry_base" in given else base.base,
        settings.retry_cap if "retry_cap" in given else base.cap,
        settings.retry_max_attempts if "retry_max_attempts" in given else base.max_attempts,
        settings.on_failure if "on_failure" in given else base.on_exhausted,
    )


# Old spellings, still read: environment variables renamed, and negative ones turned around.
DEPRECATED_ENV = {
    "PROJECTOR_CONSUMER_GROUP_MEMBER": "PROJECTOR_MEMBER",
    "PROJECTOR_CONSUMER_GROUP_SIZE": "PROJECTOR_GROUP_SIZE",
}
INVERTED_ENV = {"PROJECTOR_NO_STANDBY": "standby", "PROJECTOR_NO_PROGRESS": "progress"}
_TRUE = {"1", "true", "yes", "on"}


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (``overrides``; None means not given), the environment and .env."""
    given = {name: value for name, value in overrides.items() if value is not None}
    for old, new in DEPRECATED_ENV.items():
        if old in os.environ:
            deprecated(old, new)
    for old, name in INVERTED_ENV.items():
        if old in os.environ and name not in given:
            deprecated(old, f"PROJECTOR_{name.upper()}=false")
            given[name] = os.environ[old].strip().lower() not in _TRUE
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


class _LogFormatOnly(BaseSettings):
    """The log format alone, read leniently from the environment and .env, as `Settings` would:
    how to report an error in the other settings."""

    model_config = SettingsConfigDict(env_prefix="PROJECTOR_", env_file=".env", extra="ignore")

    log_format: str = "text"


def requested_log_format(args: list[str]) -> LogFormat:
    """The log format a command line (``--log-format json`` / ``--log-format=json``), else the
    environment or .env, asks for; text when it asks for none or for something else."""
    value: str | None = None
    for index, arg in enumerate(args):
        if arg == "--log-format" and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith("--log-format="):
            value = arg.partition("=")[2]
    if value is None:
        try:
            value = _LogFormatOnly().log_format
        except ValidationError:
            value = LogFormat.TEXT
    return LogFormat.JSON if value.strip().lower() == LogFormat.JSON else LogFormat.TEXT


def deprecated(old: str, new: str) -> None:
    """Log that an old spelling was used (action ``setting_deprecated``)."""
    logger.warning(
        "%s is deprecated: use %s",
        old,
        new,
        extra={"action": "setting_deprecated", "old": old, "new": new},
    )


def value_range(name: str) -> str | None:
    """The values a setting takes, in words, from its bounds (README and ``--help`` show it):
    ``1 to 10,000``, ``over 0, up to 3,600``, ``0 or more``; None for a setting with none."""
    bounds: dict[str, float] = {}
    for constraint in Settings.model_fields[name].metadata:
        for key in ("ge", "gt", "le"):
            value = getattr(constraint, key, None)
            if value is not None:
                bounds[key] = value
    if not bounds:
        return None
    low = _number(bounds["ge"]) if "ge" in bounds else f"over {_number(bounds.get('gt', 0))}"
    if "le" not in bounds:
        return f"{low} or more"
    joint = " to " if "ge" in bounds else ", up to "
    return f"{low}{joint}{_number(bounds['le'])}"


def _number(value: float) -> str:
    return f"{int(value):,}" if value == int(value) else f"{value:g}"


def flag_for(name: str) -> str:
    """The command-line flag of a setting."""
    extra = Settings.model_fields[name].json_schema_extra
    flag = extra.get("flag") if isinstance(extra, dict) else None
    return str(flag) if flag else "--" + name.replace("_", "-")


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "settings"
    flag = flag_for(name) if name in Settings.model_fields else "--" + name
    message = str(error["msg"]).removeprefix("Value error, ")
    # A URL may hold a password: never repeated back.
    got = "" if name in _SECRET else f" (got {error.get('input')!r})"
    return f"setting {name} ({flag} / PROJECTOR_{name.upper()}) is invalid: {message}{got}"


_SECRET = frozenset({"database_url"})
