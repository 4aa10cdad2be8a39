"""``python -m bench catchup|upsert|tail|group|failing|takeover|elastic|rebuild|startup|all [sizes]
[--smoke] [--scale] [--only NAMES] [--reuse] [--profile DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from bench import (
    elastic,
    elastic_report,
    failing,
    rebuild,
    report,
    scenarios,
    seed,
    server,
    startup,
    takeover,
)
from bench.profile import summarize
from bench.scenarios import (
    MEMORY_GROWTH_MB,
    MEMORY_PAIRS,
    SMOKE,
    Measurer,
    Outcome,
    Scenario,
    Sizes,
)

COMMANDS = (
    "catchup",
    "upsert",
    "tail",
    "group",
    "failing",
    "takeover",
    "elastic",
    "rebuild",
    "startup",
    "all",
)
# The datasets each command reads (see scenarios.datasets).
DATASETS = {
    "catchup": ("main", "few", "distinct", "upsert"),
    "upsert": ("upsert",),
    "tail": (),
    "group": ("main",),
    "failing": ("main", "held"),
    "takeover": (),  # it writes its own, while its members run (see bench.takeover)
    "elastic": (),  # it writes its own, while its members run (see bench.elastic)
    "rebuild": ("upsert",),  # its runners are its own (see bench.rebuild)
    "startup": (),
}
SIZE_HELP = {
    "events": "events in each catch-up dataset (and the group one)",
    "streams": "streams of the main catch-up dataset (also read by the group scenario)",
    "few_streams": "streams of the few-streams catch-up dataset",
    "upsert_events": "events of the upsert scenario",
    "upsert_streams": "streams of the upsert scenario",
    "group_size": "consumer-group size (member 0 is measured)",
    "batch_size": "events per read, for projector and the baselines alike",
    "pool_size": "connections of the upsert handler's pool",
    "tail_rate": "events/s the tail scenario's writer appends",
    "tail_seconds": "seconds of tail-latency measurement per tail_sleep",
    "tail_warmup": "seconds of writing before tail latencies count",
    "tail_sleeps": "comma-separated tail_sleep values to measure",
    "scale_events": "events of the --scale catch-up dataset",
    "scale_tail_streams": "streams the --scale tail writer spreads its events over",
    "scale_tail_rate": "events/s the --scale tail writer appends",
    "elastic_events": "events of each elastic catch-up",
    "elastic_members": "comma-separated member counts of the elastic catch-ups",
    "elastic_buckets": "buckets of the elastic groups",
    "elastic_heartbeat": "seconds between an elastic member's heartbeats",
    "elastic_lease": "seconds of an elastic member's bucket lease",
    "elastic_rate": "events/s the elastic join scenario's writer appends",
    "elastic_joins": "joins (each followed by the older member's leave) of the elastic run",
    "held_events": "events of the stream held in the failing memory scenario (and of its "
    "healthy neighbour)",
    "takeover_runs": "rounds of a cold start then a kill with a hot standby waiting",
}
# What --scale adds to a command: its datasets and its scenarios (see scenarios.scaled_*).
SCALE_DATASETS = {"catchup": ("main", "scale"), "tail": ()}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command in ("startup", "all"):
        startup.report(args.repeat)  # no database: a figure of the interpreter and imports
        if args.command == "startup":
            return
    sizes = _sizes(args)
    commands = [c for c in COMMANDS[:-2] if args.command in (c, "all")]
    needed = {name for command in commands for name in DATASETS[command]}
    if args.scale:
        needed |= {name for command in commands for name in SCALE_DATASETS.get(command, ())}
    datasets = [d for name, d in scenarios.datasets(sizes).items() if name in needed]
    settings = dict(_setting(text) for text in args.setting)
    started = time.perf_counter()
    with server.open_server(reuse=args.reuse) as pg:
        store, scripts = server.choose_store(args.store)
        dbname = seed.database_name(store, datasets)
        url = _seeded_database(pg, dbname, store, scripts, datasets)
        run_id = server.run_id()
        try:
            plan = _only(
                _plan(commands, url, run_id, sizes, settings, store, scale=args.scale), args.only
            )
            measurer = Measurer(
                repeat=args.repeat,
                timeout=args.timeout,
                profile_dir=args.profile,
                tail_rate=sizes.tail_rate,
            )
            outcomes = [measurer.run(scenario) for scenario in plan]
            # Last: their member processes would compete with any measurement after them.
            takeover_outcome = (
                takeover.run(url, run_id, sizes, settings) if "takeover" in commands else None
            )
            elastic_outcome = (
                elastic.run(url, run_id, sizes, settings) if "elastic" in commands else None
            )
            rebuild_outcome = (
                rebuild.run(url, run_id, sizes, settings, args.repeat)
                if "rebuild" in commands
                else None
            )
        finally:
            if not (args.keep or args.reuse):
                pg.drop(dbname)
    _compare_memory(outcomes)
    failing.compare_memory(outcomes)
    context = {
        "run_id": run_id,
        "store": store,
        "server": pg.description,
        "batch_size": sizes.batch_size,
        "smoke": args.smoke,
        "repeat": args.repeat,
        "settings": settings,
        "profiled": args.profile is not None,
    }
    lines = report.json_lines(outcomes, context) if outcomes else ""
    if outcomes:
        print(report.table(outcomes))
    if takeover_outcome is not None:
        print(takeover.table(takeover_outcome))
        lines = "\n".join(filter(None, (lines, takeover.json_line(takeover_outcome, context))))
    if elastic_outcome is not None:
        print(elastic_report.table(elastic_outcome))
        lines = "\n".join(
            filter(None, (lines, elastic_report.json_lines(elastic_outcome, context)))
        )
    if rebuild_outcome is not None:
        print(rebuild.table(rebuild_outcome))
        lines = "\n".join(filter(None, (lines, rebuild.json_line(rebuild_outcome, context))))
    print(lines, flush=True)
    if args.json is not None:
        args.json.write_text(lines + "\n")
    if args.profile is not None:
        _write_summaries(args.profile, outcomes)
    _say(f"done in {time.perf_counter() - started:.0f} s ({pg.description}, store: {store})")


def _only(plan: list[Scenario], names: str | None) -> list[Scenario]:
    """The scenarios of ``plan`` named in ``names`` (all of them without it)."""
    if names is None:
        return plan
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    unknown = wanted - {scenario.name for scenario in plan}
    if unknown:
        raise SystemExit(
            f"bench: no scenario {', '.join(sorted(unknown))} in this command: pick from "
            + ", ".join(scenario.name for scenario in plan)
        )
    return [scenario for scenario in plan if scenario.name in wanted]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="projector's benchmarks, each against a baseline measured in the same run",
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for CI)")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="also the scale scenarios of catchup and tail: a catch-up of --scale-events "
        "(10M) against the main one, and a tail of --scale-tail-streams (10k) written at "
        "--scale-tail-rate (2k/s); long",
    )
    for field in fields(Sizes):
        flag = "--" + field.name.replace("_", "-")
        kind = TUPLES.get(field.name, type(field.default))
        parser.add_argument(flag, type=kind, help=f"{SIZE_HELP[field.name]} ({field.default})")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side, alternating (1)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a projector setting for every projector run, e.g. max_read_ahead=10 (repeatable)",
    )
    parser.add_argument(
        "--store",
        choices=("auto", "messagedb", "own"),
        default="auto",
        help="Message DB 1.3.1 from npm (auto: when npm can fetch it) or projector's own store",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help=f"a persistent local cluster in {server.PERSISTENT_DATA_DIR}, keeping seeded data",
    )
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help="run only these of the command's scenarios (comma-separated names, as the report "
        "prints them; e.g. --scale --only catchup-scale)",
    )
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="run projector under py-spy, stacks into DIR"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON lines here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per child run")
    return parser


def _sizes(args: argparse.Namespace) -> Sizes:
    base = SMOKE if args.smoke else Sizes()
    given = {f.name: getattr(args, f.name) for f in fields(Sizes)}
    return replace(base, **{name: value for name, value in given.items() if value is not None})


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


# The sizes given as comma-separated lists.
TUPLES: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "tail_sleeps": _floats,
    "elastic_members": _ints,
}


def _setting(text: str) -> tuple[str, Any]:
    name, equals, value = text.partition("=")
    if not equals:
        raise SystemExit(f"bench: --setting {text!r} is not NAME=VALUE")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def _seeded_database(
    pg: server.Server,
    dbname: str,
    store: str,
    scripts: Path | None,
    datasets: list[seed.Dataset],
) -> str:
    """The database for these datasets: reused when a complete one exists, else seeded now."""
    url = pg.url_for(dbname)
    if pg.exists(dbname):
        if seed.is_seeded(url):
            _say(f"reusing the seeded database {dbname}")
            return url
        pg.drop(dbname)  # an interrupted seeding
    pg.create(dbname)
    server.install_store(url, store, scripts)
    seed.seed(url, datasets)
    return url


def _plan(
    commands: list[str],
    url: str,
    run_id: str,
    sizes: Sizes,
    settings: dict[str, Any],
    store: str,
    *,
    scale: bool = False,
) -> list[Scenario]:
    builders: dict[str, Callable[[], list[Scenario]]] = {
        "catchup": lambda: scenarios.catchup(url, run_id, sizes, settings),
        "upsert": lambda: scenarios.upserting(url, run_id, sizes, settings),
        "tail": lambda: scenarios.tail(url, run_id, sizes, settings),
        "group": lambda: scenarios.group(url, run_id, sizes, settings, store),
        "failing": lambda: failing.scenarios(url, run_id, sizes, settings),
    }
    plan: list[Scenario] = []
    for command in commands:
        if command in ("takeover", "elastic", "rebuild"):
            continue  # no Scenario: their member processes are their own
        if command == "upsert" and "catchup" in commands:
            continue  # catchup includes it
        plan.extend(builders[command]())
        if scale and command == "catchup":
            plan.extend(scenarios.scaled_catchup(url, run_id, sizes, settings))
        if scale and command == "tail":
            plan.extend(scenarios.scaled_tail(url, run_id, sizes, settings))
    return plan


def _compare_memory(outcomes: list[Outcome]) -> None:
    """Peak memory must not grow with the number of streams: distinct vs few streams, for the
    stream handler and for the batch handler (`scenarios.MEMORY_PAIRS`)."""
    by_name = {outcome.scenario.name: outcome for outcome in outcomes}
    for few_name, distinct_name in MEMORY_PAIRS:
        few, distinct = by_name.get(few_name), by_name.get(distinct_name)
        if few is None or distinct is None:
            continue
        growth = distinct.projector["peak_rss_mb"] - few.projector["peak_rss_mb"]
        distinct.projector["peak_rss_growth_mb"] = round(growth, 1)
        streams = (few.scenario.dataset, distinct.scenario.dataset)
        if streams[0] is not None and streams[1] is not None and growth > MEMORY_GROWTH_MB:
            distinct.notes.append(
                f"peak RSS grew by {growth:.0f} MB from {streams[0].streams:,} to "
                f"{streams[1].streams:,} streams"
            )


def _write_summaries(folder: Path, outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        raw = folder / f"{outcome.scenario.name}.txt"
        if raw.is_file():
            summary = folder / f"{outcome.scenario.name}.summary.txt"
            summary.write_text(summarize(raw) + "\n")
            _say(f"profile of {outcome.scenario.name}: {raw} (summary: {summary})")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
