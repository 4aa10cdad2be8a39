"""Markdown tables of projector's settings, commands and metrics, read off the code itself."""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anyio
import click

from projector.cli import main
from projector.model.events import Event
from projector.pipeline.sink import StreamsSink
from projector.pipeline.streams import TroubledStream
from projector.runtime.checkpoint_writer import CheckpointWriter, CommitsCheckpoints
from projector.runtime.replays import HeldCount
from projector.settings import DEPRECATED_ENV, INVERTED_ENV, Settings, value_range
from projector.storage.held import HeldState
from projector.telemetry.health import Health
from projector.telemetry.lag import CategoryLag, LagReading
from projector.telemetry.metrics import Metrics, RunnerState

# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SettingDoc:
    name: str
    flags: str  # as `--help` shows them, e.g. "--standby / --no-standby"
    env: str
    default: str
    range: str  # the values it takes, in words; empty when it has no bounds
    meaning: str


def settings() -> list[SettingDoc]:
    """Every field of `Settings`, with the flag the commands give it."""
    options = _setting_options()
    return [
        SettingDoc(
            name,
            _flags(options[name]),
            f"PROJECTOR_{name.upper()}",
            _default(field.default),
            value_range(name) or "",
            field.description or "",
        )
        for name, field in Settings.model_fields.items()
    ]


def settings_table() -> str:
    rows = [
        (f"`{s.name}`", s.flags, f"`{s.env}`", s.default, s.range, s.meaning)
        for s in settings()
    ]
    renamed = [f"`{old}` (now `{new}`)" for old, new in DEPRECATED_ENV.items()]
    renamed += [
        f"`{old}` (now `PROJECTOR_{name.upper()}=false`)" for old, name in INVERTED_ENV.items()
    ]
    return (
        _table(("setting", "flag", "environment", "default", "range", "meaning"), rows)
        + "\n\nOld spellings still read, each logging `setting_deprecated` with its replacement: "
        + ", ".join(renamed)
        + ".\n"
    )


def _setting_options() -> dict[str, click.Option]:
    """The click option of each setting, from whichever command has it."""
    found: dict[str, click.Option] = {}
    for _, command in commands():
        for param in command.params:
            if isinstance(param, click.Option) and param.name in Settings.model_fields:
                found.setdefault(param.name, param)
    missing = set(Settings.model_fields) - set(found)
    if missing:
        raise LookupError(f"settings no command takes as a flag: {sorted(missing)}")
    return found


def _flags(option: click.Option) -> str:
    on = ", ".join(f"`{flag}`" for flag in option.opts)
    if option.secondary_opts:
        return on + " / " + ", ".join(f"`{flag}`" for flag in option.secondary_opts)
    return on + (" (repeat)" if option.multiple else "")


def _default(value: Any) -> str:
    if value is None or value == ():
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- commands ---------------------------------------------------------------------------------


def commands() -> list[tuple[str, click.Command]]:
    """Every command of `projector`, as ``("projector checkpoints set", command)``, groups
    before their subcommands, in the order `--help` lists them."""
    return list(_walk("projector", main))


def _walk(path: str, command: click.Command) -> Iterator[tuple[str, click.Command]]:
    if path != "projector":
        yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None
            yield from _walk(f"{path} {name}", sub)


def cli_reference() -> str:
    """A section per command: its usage line, what it does, and its options as `--help` gives
    them."""
    parts = []
    for path, command in commands():
        context = _context(path, command)
        usage = " ".join([path, *command.collect_usage_pieces(context)])
        parts.append(f"### `{path}`\n\n```\n{usage}\n```\n\n{_paragraphs(command.help or '')}\n")
        records = [
            record
            for param in command.get_params(context)
            if "--help" not in param.opts and (record := param.get_help_record(context)) is not None
        ]
        if records:
            rows = [(f"`{flags}`", _one_line(help_text)) for flags, help_text in records]
            parts.append(_table(("option", "meaning"), rows) + "\n")
    return "\n".join(parts)


def _context(path: str, command: click.Command) -> click.Context:
    parent = None
    for name in path.split()[:-1]:
        parent = click.Context(main, info_name=name, parent=parent)
    return click.Context(command, info_name=path.split()[-1], parent=parent)


def _paragraphs(text: str) -> str:
    """Click's help text (``\\b`` marks a block kept as written) as Markdown paragraphs."""
    return "\n\n".join(_one_line(block) for block in text.replace("\b\n", "").split("\n\n"))


# -- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricDoc:
    name: str  # as Prometheus stores it: counters end in _total
    kind: str  # counter, gauge or histogram
    labels: tuple[str, ...]
    meaning: str

    @property
    def series(self) -> frozenset[str]:
        """The names its samples have in a query (a histogram's _bucket, _count and _sum)."""
        if self.kind == "histogram":
            return frozenset(f"{self.name}_{part}" for part in ("bucket", "count", "sum"))
        return frozenset({self.name})


def metrics() -> list[MetricDoc]:
    """Every metric a runner's registry can serve, read from a registry whose every part has
    been exercised once (the gauges of a running member, an elastic member's buckets, a failed
    call, an outage), so that each family has samples to show its labels."""
    found = []
    for family in anyio.run(_families):
        labels = tuple(dict.fromkeys(k for s in family.samples for k in s.labels if k != "le"))
        if not labels:
            raise LookupError(f"{family.name} has no samples: exercise it in docgen.reference")
        name = f"{family.name}_total" if family.type == "counter" else family.name
        found.append(MetricDoc(name, family.type, labels, family.documentation))
    return sorted(found, key=lambda metric: metric.name)


def metric_series() -> frozenset[str]:
    """Every series name a query may use."""
    return frozenset().union(*(metric.series for metric in metrics()))


def metrics_table() -> str:
    rows = [
        (f"`{m.name}`", m.kind, ", ".join(m.labels), _one_line(m.meaning)) for m in metrics()
    ]
    return _table(("metric", "type", "labels", "meaning"), rows) + "\n"


class _NoCommits:
    name = "docs"

    async def commit(self, positions: dict[str, int]) -> None:
        raise AssertionError("the docs' runner never commits")


class _Buckets:
    owned = frozenset({0, 1})
    rebalances = 1


class _Held:
    """A runner holding one stream retrying and one parked, each failing for a minute."""

    def held(self, state: HeldState) -> HeldCount:
        return HeldCount(1, 60.0, 5.0 if state is HeldState.RETRYING else None)

    def troubled(self, *, longer_than: float) -> list[TroubledStream]:
        return [TroubledStream("account-2", "retrying", 60.0, 3)]


async def _families() -> list[Any]:
    health = Health(max_db_age=30, ready_max_lag=0)
    health.lag_measured(
        LagReading({"account": CategoryLag("account", 1, 2, 1, 0.5)}, anyio.current_time(), 1.0)
    )
    metrics = Metrics("balances", health)
    metrics.events_read("account", 1, 0.001)
    metrics.handler_finished("account-1", 1, 0.001, None)
    metrics.handler_finished("account-1", 1, 0.001, RuntimeError("failed"))
    metrics.reconnecting("reading account")
    metrics.outage_started()
    metrics.outage_ended(1.0)

    async def handle(stream_name: str, events: list[Event]) -> int:
        return events[-1].position + 1

    # Never started: a scrape reads only its state.
    sink = StreamsSink(handle, max_concurrent_streams=1, max_read_ahead=1)
    writer = CheckpointWriter(cast(CommitsCheckpoints, _NoCommits()), interval=1)
    writer.start_at("account", 1)
    lanes = {"account": sink.lane("account")}
    metrics.collect_from(RunnerState(sink, lanes, writer, health, _Held(), 60))
    metrics.collect_buckets(_Buckets())
    return list(metrics.registry.collect())


# -- markdown ---------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), line(tuple("---" for _ in header)), *map(line, rows)])


GENERATED: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "cli": cli_reference,
    "metrics": metrics_table,
}
_MARKER = re.compile(r"^<!-- generated: (?P<name>[a-z]+) -->$", re.MULTILINE)


def render(markdown: str) -> str:
    """The page with each ``<!-- generated: NAME -->`` line replaced by that table."""

    def generate(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATED:
            raise KeyError(f"no generated table {name!r}: there are {sorted(GENERATED)}")
        return GENERATED[name]()

    return _MARKER.sub(generate, markdown)
