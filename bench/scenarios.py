"""The scenarios: what projector runs, what it is compared with, and the ratio it should reach.

Each scenario measures its baseline and projector in the same run, each in a child process of
its own (see `bench.jobs`); with ``--repeat`` the two alternate and the medians are compared.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.failing_jobs import DRAIN_LIMIT
from bench.jobs import Job
from bench.profile import py_spy_prefix
from bench.seed import Dataset
from bench.tail import SteadyWriter
from projector.localpg import free_port

MEMORY_LIMIT_MB = 200.0
MEMORY_GROWTH_MB = 20.0  # more peak RSS than this with more streams (or held events) is growth
ROOT = Path(__file__).resolve().parents[1]  # where `python -m bench.child` finds bench


@dataclass(frozen=True)
class Sizes:
    """Every size a run takes; the defaults finish in a few minutes on two cores."""

    events: int = 1_000_000
    streams: int = 10_000
    few_streams: int = 1_000
    upsert_events: int = 200_000
    upsert_streams: int = 10_000
    group_size: int = 4
    batch_size: int = 500
    pool_size: int = 10
    tail_rate: float = 200.0
    tail_seconds: float = 10.0
    tail_warmup: float = 1.0
    tail_sleeps: tuple[float, ...] = (0.1, 1.0)
    # --scale only: a catch-up ten times the main one, and a wide, fast tail.
    scale_events: int = 10_000_000
    scale_tail_streams: int = 10_000
    scale_tail_rate: float = 2_000.0
    # elastic: member processes of one elastic group (see bench.elastic).
    elastic_events: int = 200_000
    elastic_members: tuple[int, ...] = (1, 2, 4)
    elastic_buckets: int = 64
    elastic_heartbeat: float = 0.5
    elastic_lease: float = 5.0
    elastic_rate: float = 50.0
    elastic_joins: int = 2
    # failing: the held stream's events in the memory scenario (as many again of a healthy one).
    held_events: int = 100_000
    # takeover: a fixed member killed with a hot standby waiting (see bench.takeover).
    takeover_runs: int = 3


SMOKE = Sizes(
    events=3_000,
    streams=100,
    few_streams=10,
    upsert_events=2_000,
    upsert_streams=100,
    tail_seconds=1.0,
    tail_warmup=0.5,
    scale_events=6_000,
    scale_tail_streams=200,
    scale_tail_rate=200.0,
    elastic_events=3_000,
    # The fault suite's beat and lease: settling takes a few beats, so the smoke run is quicker.
    elastic_heartbeat=0.2,
    elastic_lease=2.0,
    elastic_joins=1,
    held_events=1_000,
    takeover_runs=1,
)


@dataclass(frozen=True)
class Scenario:
    """projector's run against one baseline; ``target`` is the least acceptable ratio."""

    name: str
    what: str
    projector: Job
    baseline: Job | None = None
    baseline_label: str = ""
    target: float | None = None
    memory_limit_mb: float | None = None
    references: tuple[tuple[str, Job], ...] = ()
    # Whether the references take turns with both sides on every repeat (medians, as theirs),
    # rather than run once after them: for a reference that is a figure in its own right.
    repeat_references: bool = False
    dataset: Dataset | None = None
    # False when the baseline does other work on purpose (the scale ratio: 10M against 1M
    # events), so that handling different counts is not a failure.
    same_work: bool = True
    # Tail scenarios: the writer's rate and streams (None: the run's --tail-rate, 100 streams).
    writer_rate: float | None = None
    writer_streams: int = 100


@dataclass
class Outcome:
    """A scenario's figures: projector's, the baseline's, and the verdict."""

    scenario: Scenario
    projector: dict[str, Any]
    baseline: dict[str, Any] | None = None
    references: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline["events_per_s"]:
            return None
        return float(self.projector["events_per_s"] / self.baseline["events_per_s"])

    def ratio_of(self, label: str) -> float | None:
        """A reference's events/s against the baseline's."""
        if self.baseline is None or not self.baseline["events_per_s"]:
            return None
        return float(self.references[label]["events_per_s"] / self.baseline["events_per_s"])

    @property
    def met(self) -> bool | None:
        target, ratio = self.scenario.target, self.ratio
        if target is None or ratio is None:
            return None
        limit = self.scenario.memory_limit_mb
        memory_ok = limit is None or self.projector["peak_rss_mb"] < limit
        return ratio >= target and memory_ok and not self.notes

    def as_json(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "scenario": s.name,
            "what": s.what,
            "dataset": None if s.dataset is None else vars(s.dataset),
            "projector": self.projector,
            "baseline": None
            if self.baseline is None
            else {"what": s.baseline_label, **self.baseline},
            "references": {
                label: {**figures, "ratio": _rounded(self.ratio_of(label))}
                for label, figures in self.references.items()
            },
            "ratio": _rounded(self.ratio),
            "target": s.target,
            "memory_limit_mb": s.memory_limit_mb,
            "met": self.met,
            "notes": self.notes,
        }


def _rounded(ratio: float | None) -> float | None:
    return None if ratio is None else round(ratio, 3)


def datasets(sizes: Sizes) -> dict[str, Dataset]:
    return {
        "main": Dataset("bench_main", sizes.events, sizes.streams),
        "few": Dataset("bench_few", sizes.events, sizes.few_streams),
        "distinct": Dataset("bench_distinct", sizes.events, sizes.events),
        "upsert": Dataset("bench_upsert", sizes.upsert_events, sizes.upsert_streams),
        "scale": Dataset("bench_scale", sizes.scale_events, sizes.streams),
        "held": Dataset("bench_held", 2 * sizes.held_events, 2),
    }


def scaled_catchup(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    """The main catch-up ten times over (--scale): its rate must stay within 10% of the main
    dataset's, measured in the same run, and its memory flat."""
    data = datasets(sizes)
    main, scale = data["main"], data["scale"]

    def project(name: str, dataset: Dataset) -> Job:
        return Job(
            "projector",
            url=url,
            category=dataset.category,
            group=f"bench_{run_id}_{name.replace('-', '_')}",
            batch_size=sizes.batch_size,
            settings=settings,
        )

    return [
        Scenario(
            "catchup-scale",
            f"catch-up, no-op handler, {scale.events:,} events over {scale.streams:,} streams",
            project("catchup-scale", scale),
            project("catchup-scale-base", main),
            f"projector on the main dataset, {main.events:,} events",
            target=0.9,
            memory_limit_mb=MEMORY_LIMIT_MB,
            dataset=scale,
            same_work=False,
        )
    ]


def scaled_tail(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    """A wide, fast tail (--scale): many streams written at a high rate, woken by NOTIFY."""
    streams, rate = sizes.scale_tail_streams, sizes.scale_tail_rate
    return [
        Scenario(
            "tail-notify-scale",
            f"tail latency, commit to handler call, {streams:,} streams written at {rate:g} "
            "events/s, woken by the NOTIFY trigger, tail_sleep 1",
            _tail_job(url, f"bench_{run_id}_tailscale", sizes, settings, 1.0, notify=True),
            writer_rate=rate,
            writer_streams=streams,
        )
    ]


def catchup(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    data = datasets(sizes)
    common: dict[str, Any] = {"url": url, "batch_size": sizes.batch_size, "settings": settings}

    def read(dataset: Dataset, **extra: Any) -> Job:
        return Job("read_loop", category=dataset.category, **common, **extra)

    def project(name: str, dataset: Dataset, **extra: Any) -> Job:
        group = f"bench_{run_id}_{name.replace('-', '_')}"
        return Job("projector", category=dataset.category, group=group, **{**common, **extra})

    main, few, distinct = data["main"], data["few"], data["distinct"]
    plain = "plain read loop, same SQL and batch size, no JSON decode"
    decoding = "plain read loop + json.loads of data and metadata"
    return [
        Scenario(
            "catchup",
            f"catch-up, no-op handler, {main.events:,} events over {main.streams:,} streams",
            project("catchup", main),
            read(main),
            plain,
            target=0.75,
            references=(
                (decoding, read(main, decode=True)),
                (
                    "the same loop on psycopg's async connection under anyio",
                    replace(read(main), kind="async_read_loop"),
                ),
                (
                    "projector with metrics served (--metrics-port)",
                    project(
                        "catchup-metrics",
                        main,
                        settings={**settings, "metrics_port": free_port()},
                    ),
                ),
            ),
            dataset=main,
        ),
        Scenario(
            "catchup-decode",
            f"catch-up, handler reads data and metadata, {main.events:,} events over "
            f"{main.streams:,} streams",
            project("catchup-decode", main, handler="decode"),
            read(main, decode=True),
            decoding,
            references=(
                ("the same loop with orjson.loads", read(main, decode=True, decoder="orjson")),
            ),
            dataset=main,
        ),
        Scenario(
            "catchup-few-streams",
            f"catch-up, no-op handler, {few.events:,} events over {few.streams:,} streams",
            project("catchup-few-streams", few),
            read(few),
            plain,
            target=0.6,
            memory_limit_mb=MEMORY_LIMIT_MB,
            dataset=few,
        ),
        Scenario(
            "catchup-distinct-streams",
            f"catch-up, no-op handler, {distinct.events:,} events, one per stream",
            project("catchup-distinct-streams", distinct),
            read(distinct),
            plain,
            target=0.6,
            memory_limit_mb=MEMORY_LIMIT_MB,
            dataset=distinct,
        ),
        *_batch_catchups(read, project, data),
        *upserting(url, run_id, sizes, settings),
    ]


# The per-stream handler's catch-up scenarios on 1k and on 1M streams, and the batch handler's:
# the peak RSS of each pair's second must not grow past its first's (see `cli._compare_memory`).
MEMORY_PAIRS = (
    ("catchup-few-streams", "catchup-distinct-streams"),
    ("catchup-batch-few-streams", "catchup-batch-distinct-streams"),
)


def _batch_catchups(
    read: Callable[[Dataset], Job], project: Callable[..., Job], data: dict[str, Dataset]
) -> list[Scenario]:
    """A no-op ``@projection.batch`` handler's catch-ups, default settings: one call per read
    batch (of up to ``batch_max_streams`` spans), against the plain read loop."""
    main, few, distinct = data["main"], data["few"], data["distinct"]
    plain = "plain read loop, same SQL and batch size, no JSON decode"

    def batch(name: str, dataset: Dataset) -> Job:
        return project(name, dataset, handler="noop_batch")

    return [
        Scenario(
            "catchup-batch",
            f"catch-up, no-op batch handler (@projection.batch), {main.events:,} events over "
            f"{main.streams:,} streams",
            batch("catchup-batch", main),
            read(main),
            plain,
            target=0.95,
            # The floor under anything projector does: reading on the async stack it is
            # built on, taking turns with both sides so that its ratio is a median too.
            references=(
                (
                    "the same loop on psycopg's async connection under anyio",
                    replace(read(main), kind="async_read_loop"),
                ),
            ),
            repeat_references=True,
            dataset=main,
        ),
        Scenario(
            "catchup-batch-few-streams",
            f"catch-up, no-op batch handler, {few.events:,} events over {few.streams:,} streams",
            batch("catchup-batch-few-streams", few),
            read(few),
            plain,
            target=0.95,
            memory_limit_mb=MEMORY_LIMIT_MB,
            dataset=few,
        ),
        Scenario(
            "catchup-batch-distinct-streams",
            f"catch-up, no-op batch handler, {distinct.events:,} events, one per stream",
            batch("catchup-batch-distinct-streams", distinct),
            read(distinct),
            plain,
            target=0.95,
            memory_limit_mb=MEMORY_LIMIT_MB,
            dataset=distinct,
        ),
    ]


def upserting(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    dataset = datasets(sizes)["upsert"]
    common: dict[str, Any] = {
        "url": url,
        "category": dataset.category,
        "batch_size": sizes.batch_size,
    }
    return [
        *_per_span_upserts(run_id, sizes, settings, dataset, common),
        *_batch_upserts(run_id, sizes, settings, dataset, common),
    ]


def _per_span_upserts(
    run_id: str, sizes: Sizes, settings: dict[str, Any], dataset: Dataset, common: dict[str, Any]
) -> list[Scenario]:
    return [
        Scenario(
            "upsert",
            f"catch-up, handler upserts one row per stream span through a pool of "
            f"{sizes.pool_size}, {dataset.events:,} events over {dataset.streams:,} streams",
            Job(
                "projector",
                handler="upsert",
                group=f"bench_{run_id}_upsert",
                table=f"bench_{run_id}_projector",
                pool_size=sizes.pool_size,
                settings=settings,
                **common,
            ),
            Job("upsert_loop", table=f"bench_{run_id}_baseline", **common),
            "one connection: read a batch, the same upserts one by one",
            target=1.5,
            dataset=dataset,
        ),
        Scenario(
            "transactional",
            f"exactly-once: the same upsert in a transactional projection (positions recorded "
            f"in the handler's transaction), {dataset.events:,} events over "
            f"{dataset.streams:,} streams",
            Job(
                "projector",
                handler="transactional",
                group=f"bench_{run_id}_transactional",
                table=f"bench_{run_id}_transactional",
                settings=settings,
                **common,
            ),
            Job(
                "projector",
                handler="upsert",
                group=f"bench_{run_id}_at_least_once",
                table=f"bench_{run_id}_at_least_once",
                pool_size=sizes.pool_size,
                settings=settings,
                **common,
            ),
            "the at-least-once pipeline running the same upsert handler",
            target=0.5,
            dataset=dataset,
        ),
    ]


def _batch_upserts(
    run_id: str, sizes: Sizes, settings: dict[str, Any], dataset: Dataset, common: dict[str, Any]
) -> list[Scenario]:
    """The same rows, one per stream span, written by batch handlers, default settings: one
    statement per batch call of up to ``batch_max_streams`` spans (usually a read batch)."""

    def batch_job(handler: str, name: str, kind: str = "projector") -> Job:
        return Job(
            kind,
            handler=handler,
            group=f"bench_{run_id}_{name}",
            table=f"bench_{run_id}_{name}",
            pool_size=sizes.pool_size,
            settings=settings,
            **common,
        )

    spread = f"{dataset.events:,} events over {dataset.streams:,} streams"
    what = (
        f"exactly-once batch upserts (transactional_batch, one unnest upsert and one "
        f"position statement per batch call), {spread}"
    )
    return [
        Scenario(
            "transactional-batch",
            what,
            batch_job("transactional_batch", "transactional_batch"),
            Job(
                "projector",
                handler="upsert",
                group=f"bench_{run_id}_per_span",
                table=f"bench_{run_id}_per_span",
                pool_size=sizes.pool_size,
                settings=settings,
                **common,
            ),
            "the at-least-once pipeline upserting one span at a time (the upsert scenario)",
            target=3.0,
            dataset=dataset,
        ),
        Scenario(
            "transactional-batch-vs-batch",
            f"exactly-once batch upserts with each stream's position in its read-model row "
            f"(transactional_batch(positions='read_model'), one GuardedUpsert statement per "
            f"batch call), {spread}",
            batch_job("read_model_batch", "read_model_batch"),
            batch_job("batch", "batch"),
            "an at-least-once batch handler making the same upserts through a pool",
            target=0.9,
            references=(
                (
                    "transactional_batch with the positions in projector.stream_positions",
                    batch_job("transactional_batch", "transactional_batch_2"),
                ),
            ),
            repeat_references=True,
            dataset=dataset,
        ),
        Scenario(
            "batch-statements",
            f"the SQL of the batches alone, one after the other on one connection: each "
            f"batch's upsert in a transactional_batch's transaction (positions locked on first "
            f"meeting, recorded in one statement, COMMIT; BEGIN), {dataset.events:,} events",
            batch_job("transactional_batch", "statements_transactional", "statements_loop"),
            batch_job("batch", "statements_batch", "statements_loop"),
            "the same upserts alone, autocommit (what the at-least-once batch handler sends)",
            references=(
                (
                    "positions='read_model': the GuardedUpsert statement, then COMMIT; BEGIN",
                    batch_job("read_model_batch", "statements_read_model", "statements_loop"),
                ),
            ),
            repeat_references=True,
            dataset=dataset,
        ),
    ]


def group(
    url: str, run_id: str, sizes: Sizes, settings: dict[str, Any], store: str
) -> list[Scenario]:
    main = datasets(sizes)["main"]
    member, size = 0, sizes.group_size
    common: dict[str, Any] = {"url": url, "category": main.category, "batch_size": sizes.batch_size}
    function = "Message DB 1.3.1's" if store == "messagedb" else "projector's own store's"
    as_member = {**common, "member": member, "size": size}
    return [
        Scenario(
            f"group-member-{member}-of-{size}",
            f"consumer-group member {member} of {size}, no-op handler, with the member index "
            f"(projector migrate --member-index {size}), {main.events:,} events over "
            f"{main.streams:,} streams",
            Job(
                "projector",
                group=f"bench_{run_id}_group",
                member_index=True,
                settings=settings,
                **as_member,
            ),
            Job("group_read_loop", **as_member),
            f"{function} get_category_messages, group arguments",
            target=4.0,
            references=(
                (
                    "projector's member read statement in a plain loop, with the member index",
                    Job("member_read_loop", member_index=True, **as_member),
                ),
                # Last: it drops the index (a later run builds it again, untimed).
                (
                    "projector without the member index (every member reads every row)",
                    Job(
                        "projector",
                        group=f"bench_{run_id}_group_unindexed",
                        settings=settings,
                        **as_member,
                    ),
                ),
            ),
            dataset=main,
        )
    ]


def tail(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    return [
        Scenario(
            f"tail-sleep-{sleep:g}",
            f"tail latency, commit to handler call, one writer at {sizes.tail_rate:g} events/s, "
            f"polling only, tail_sleep {sleep:g}",
            _tail_job(url, f"bench_{run_id}_tail{index}", sizes, settings, sleep),
        )
        for index, sleep in enumerate(sizes.tail_sleeps)
    ] + [
        Scenario(
            "tail-notify-sleep-1",
            f"tail latency, commit to handler call, one writer at {sizes.tail_rate:g} events/s, "
            "woken by the NOTIFY trigger (projector migrate --notify), tail_sleep 1",
            _tail_job(url, f"bench_{run_id}_tailnotify", sizes, settings, 1.0, notify=True),
        )
    ]


def _tail_job(
    url: str,
    name: str,
    sizes: Sizes,
    settings: dict[str, Any],
    tail_sleep: float,
    *,
    notify: bool = False,
) -> Job:
    """projector on a tail of its own (category and group ``name``), measuring latencies."""
    return Job(
        "projector",
        url=url,
        category=name,
        group=name,
        handler="tail",
        tail_sleep=tail_sleep,
        notify=notify,
        warmup=sizes.tail_warmup,
        seconds=sizes.tail_seconds,
        batch_size=sizes.batch_size,
        settings=settings,
    )


class Measurer:
    """Runs jobs in child processes (under py-spy with a profile folder) and the scenarios."""

    def __init__(
        self, *, repeat: int, timeout: float, profile_dir: Path | None, tail_rate: float
    ) -> None:
        self.repeat = repeat
        self.timeout = timeout
        self.profile_dir = profile_dir
        self.tail_rate = tail_rate
        self._warm: set[str] = set()
        self._runs = 0

    def run(self, scenario: Scenario) -> Outcome:
        _say(f"{scenario.name}: {scenario.what}")
        if scenario.projector.handler == "tail":
            return self._tail(scenario)
        self._warm_up(scenario.projector)
        sides = [scenario.projector]
        if scenario.baseline is not None:
            sides.append(scenario.baseline)
        if scenario.repeat_references:
            sides.extend(job for _, job in scenario.references)
        runs: list[list[dict[str, Any]]] = [[] for _ in sides]
        for attempt in range(self.repeat):
            # Alternate the order, so that no side always runs on a warmer server.
            order = list(enumerate(sides))
            for index, job in order if attempt % 2 else reversed(order):
                runs[index].append(self.measure(job, scenario.name if index == 0 else None))
        medians = [_median(side) for side in runs]
        references = (
            medians[len(sides) - len(scenario.references) :]
            if scenario.repeat_references
            else [self.measure(job) for _, job in scenario.references]
        )
        outcome = Outcome(
            scenario,
            medians[0],
            medians[1] if scenario.baseline is not None else None,
            {
                label: figures
                for (label, _), figures in zip(scenario.references, references, strict=True)
            },
        )
        _check_counts(outcome)
        return outcome

    def measure(self, job: Job, profile_name: str | None = None) -> dict[str, Any]:
        self._runs += 1
        if job.kind in ("projector", "statements_loop", "failing_catchup", "failing_tail"):
            # A group of its own for every run: a repeat must not resume from a checkpoint (or
            # find the stream positions of the last).
            job = replace(job, group=f"{job.group}_{self._runs}")
        command = [sys.executable, "-m", "bench.child", json.dumps(vars(job))]
        if profile_name is not None and self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            command = [*py_spy_prefix(self.profile_dir / f"{profile_name}.txt"), *command]
        result = subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=self.timeout, check=False
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode != 0 or not lines:
            raise SystemExit(
                f"bench: a {job.kind} run failed (exit {result.returncode}):\n"
                + result.stderr[-3000:]
            )
        figures: dict[str, Any] = json.loads(lines[-1])
        seconds = figures["seconds"]
        figures["seconds"] = round(seconds, 3)
        figures["events_per_s"] = round(figures["events"] / seconds) if seconds else 0
        _say(
            f"  {job.kind}: {figures['events']:,} events in {seconds:.2f} s "
            f"({figures['events_per_s']:,}/s), peak RSS {figures['peak_rss_mb']} MB"
        )
        return figures

    def _warm_up(self, job: Job) -> None:
        """Read a category once, untimed, before its first measurement: the first read after
        seeding is slower (cold caches), and would favour whichever side runs second."""
        if job.category not in self._warm:
            _say(f"  warming up {job.category} (untimed)")
            warm = Job("read_loop", url=job.url, category=job.category, batch_size=job.batch_size)
            subprocess.run(
                [sys.executable, "-m", "bench.child", json.dumps(vars(warm))],
                cwd=ROOT,
                capture_output=True,
                timeout=self.timeout,
                check=True,
            )
            self._warm.add(job.category)

    def _tail(self, scenario: Scenario) -> Outcome:
        """projector's tail, then the baseline's (a tail too, when there is one), each with a
        writer of its own on the job's category."""
        notes: list[str] = []
        figures = self._tail_run(scenario, scenario.projector, scenario.name, notes)
        baseline = (
            None
            if scenario.baseline is None
            else self._tail_run(scenario, scenario.baseline, None, notes)
        )
        return Outcome(scenario, figures, baseline, notes=notes)

    def _tail_run(
        self, scenario: Scenario, job: Job, profile_name: str | None, notes: list[str]
    ) -> dict[str, Any]:
        writer = SteadyWriter(
            job.url,
            job.category,
            scenario.writer_rate or self.tail_rate,
            streams=scenario.writer_streams,
        )
        writer.start()
        try:
            figures = self.measure(job, profile_name)
        finally:
            writer.stop()
        figures["events_per_s"] = round(figures["events"] / job.seconds)
        if writer.behind > writer.written / 100:
            notes.append(
                f"the writer of {job.category} fell more than 10 ms behind its schedule for "
                f"{writer.behind} of "
                f"{writer.written} events"
            )
        missed = figures.get("healthy_written", 0) - figures["events"]
        if missed > 0:
            notes.append(
                f"{missed:,} of the {figures['healthy_written']:,} healthy events written in the "
                f"window of {job.category} were not handled within {DRAIN_LIMIT:g} s after it"
            )
        return figures


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (the lower middle one of an even number)."""
    ordered = sorted(runs, key=lambda run: run["events_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        chosen["runs_events_per_s"] = [run["events_per_s"] for run in runs]
        chosen["median_events_per_s"] = statistics.median(run["events_per_s"] for run in runs)
    return chosen


def _check_counts(outcome: Outcome) -> None:
    """projector must have handled exactly what the baseline read, and written the same read
    model, row for row, as the baseline and any reference that writes one."""
    baseline, projector = outcome.baseline, outcome.projector
    if baseline is None or not outcome.scenario.same_work:
        return
    if baseline["events"] != projector["events"]:
        outcome.notes.append(
            f"projector handled {projector['events']} events, "
            f"the baseline read {baseline['events']}"
        )
    if baseline.get("read_model_digest") != projector.get("read_model_digest"):
        outcome.notes.append("the read models differ between projector and the baseline")
    for label, figures in outcome.references.items():
        digest = figures.get("read_model_digest")
        if digest is not None and digest != projector.get("read_model_digest"):
            outcome.notes.append(f"the read models differ between projector and {label!r}")


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
