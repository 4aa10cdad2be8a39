"""``python -m bench rebuild``: how fast a new version of a projection rebuilds beside the live
one, against a plain catch-up of the same events (docs, Rebuilding a projection: target
>= 0.9x).

The projection is `bench.rebuild_projection`'s (a transactional batch upsert, each version in
a schema of its own) over the upsert dataset, while a writer appends ``tail_rate`` events a
second to the same category all through both sides (the store is in use, as it is when a
rebuild is needed). Each of ``--repeat`` rounds, with a projection of the round's own:

- **catch-up**: its version 1 projects the dataset from the start, no other projector running
  (`projector run --until-caught-up`, its first run: it sets itself up and goes live);
- **rebuild**: version 1 then runs on as the live version, keeping up with the writer;
  `projector rebuild start` sets up version 2, which projects everything from the start
  beside it;
- **catch-up** again, once the live version has stopped, by another projection's version 1:
  the first catch-up read a colder cache than the rebuild, this one a warmer, fuller
  database.

So the ratio is what the live version and the rebuild's own machinery cost the catch-up. Each
side's seconds run from its ``source_started`` log line to its ``caught_up`` one (the
process's start-up and the version's setup are not counted), and its events are those of the
category below its final checkpoint. Reported per side with the rebuild's rate against the
mean of the two catch-ups around it, round by round (the median of the rounds' ratios is the
figure). The writer's events, the schemas and the rows are removed afterwards,
so a reused seeded database stays as seeded.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import report
from bench.elastic import member_env
from bench.scenarios import ROOT, Sizes, datasets
from bench.tail import SteadyWriter

TARGET = 0.9
WITHIN = 1800.0  # seconds a catch-up may take
TARGET_MODULE = "bench.rebuild_projection:projection"


@dataclass(frozen=True)
class Measure:
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass
class Outcome:
    catchups: list[Measure] = field(default_factory=list)
    rebuilds: list[Measure] = field(default_factory=list)
    written: int = 0  # by the writer the live version tailed
    live_cpu: list[float] = field(default_factory=list)  # the live process's CPU s per rebuild
    notes: list[str] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        """Each round's rebuild rate against the mean of the catch-ups around it: paired, so
        that the machine's load drifting from round to round cancels out."""
        found = []
        for index, rebuilt in enumerate(self.rebuilds):
            before, after = self.catchups[2 * index : 2 * index + 2]
            plain = (before.rate + after.rate) / 2
            if plain:
                found.append(round(rebuilt.rate / plain, 3))
        return found

    @property
    def ratio(self) -> float | None:
        """The median of the rounds' ratios."""
        return statistics.median(self.ratios) if self.ratios else None


def run(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any], repeat: int) -> Outcome:
    dataset = datasets(sizes)["upsert"]
    outcome = Outcome()
    _say(
        f"rebuild: {repeat} round(s) of a catch-up of {dataset.events:,} events, then a rebuild "
        f"of them beside the live version (a writer at {sizes.tail_rate:g} events/s all through)"
    )
    head = _head(url, dataset.category)
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as folder:
        for index in range(repeat):
            name = f"bench_rb_{run_id}_{index}"
            env = {
                **member_env(url, settings),
                "BENCH_REBUILD_NAME": name,
                "BENCH_REBUILD_CATEGORY": dataset.category,
            }
            try:
                _round(url, name, env, sizes, Path(folder), outcome)
            finally:
                _clean_up(url, name, dataset.category, head)
            _say(f"  round {index + 1}: {outcome.catchups[-2:]} / {outcome.rebuilds[-1]}")
    ratio = outcome.ratio
    if ratio is not None and ratio < TARGET:
        outcome.notes.append(f"the rebuild ran at {ratio:.2f}x a catch-up's rate (target {TARGET})")
    return outcome


def _round(
    url: str, name: str, env: dict[str, str], sizes: Sizes, logs: Path, outcome: Outcome
) -> None:
    first = {**env, "BENCH_REBUILD_VERSION": "1"}
    writer = SteadyWriter(url, env["BENCH_REBUILD_CATEGORY"], sizes.tail_rate, streams=100)
    live: subprocess.Popen[bytes] | None = None
    try:
        writer.start()
        outcome.catchups.append(_catch_up(url, name, first, sizes, logs / f"{name}-v1.log"))
        live = _start_live(first, sizes, logs / f"{name}-live.log")
        second = {**env, "BENCH_REBUILD_VERSION": "2"}
        _projector(second, "rebuild", "start", TARGET_MODULE)
        cpu = _cpu_seconds(live.pid)
        outcome.rebuilds.append(
            _catch_up(url, f"{name}_v2", second, sizes, logs / f"{name}-v2.log")
        )
        outcome.live_cpu.append(round(_cpu_seconds(live.pid) - cpu, 2))
        _stop(live, name, outcome)
        live = None
        # A plain catch-up again, after: the first ran on a colder cache than the rebuild.
        again = {**first, "BENCH_REBUILD_NAME": f"{name}_again"}
        outcome.catchups.append(
            _catch_up(url, f"{name}_again", again, sizes, logs / f"{name}-again.log")
        )
    finally:
        writer.stop()
        outcome.written += writer.written
        if live is not None:
            _stop(live, name, outcome)


def _stop(live: subprocess.Popen[bytes], name: str, outcome: Outcome) -> None:
    live.send_signal(signal.SIGTERM)
    if live.wait(timeout=60) != 0:
        outcome.notes.append(f"the live version of {name} did not stop cleanly")


def _cpu_seconds(pid: int) -> float:
    """The CPU time a process has used (user and system), from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_args(sizes: Sizes) -> list[str]:
    return [
        *("--batch-size", str(sizes.batch_size), "--log-format", "json", "--log-level", "INFO"),
        *("--summary-interval", "0", "--no-progress"),
    ]


def _catch_up(url: str, group: str, env: dict[str, str], sizes: Sizes, log: Path) -> Measure:
    with log.open("wb") as out:
        done = subprocess.run(
            [*_projector_command(), "run", TARGET_MODULE, "--until-caught-up", *_run_args(sizes)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=WITHIN,
            check=False,
        )
    lines = log.read_text(errors="replace").splitlines()
    if done.returncode != 0:
        raise SystemExit("bench: rebuild: a catch-up failed:\n" + "\n".join(lines[-15:]))
    started, ended = _logged_at(lines, "source_started"), _logged_at(lines, "caught_up")
    return Measure(_handled(url, group, env["BENCH_REBUILD_CATEGORY"]), round(ended - started, 3))


def _start_live(env: dict[str, str], sizes: Sizes, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*_projector_command(), "run", TARGET_MODULE, *_run_args(sizes)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _projector(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [*_projector_command(), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WITHIN,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: rebuild: `projector {' '.join(args)}` failed: {done.stderr}")


def _projector_command() -> list[str]:
    return [sys.executable, "-m", "projector"]


def _logged_at(lines: list[str], action: str) -> float:
    """The time of the first log line with ``action``, in seconds since the epoch."""
    for line in lines:
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("action") == action:
                return datetime.fromisoformat(entry["time"]).timestamp()
    raise SystemExit(f"bench: rebuild: no {action} line in a catch-up's log")


def _handled(url: str, group: str, category: str) -> int:
    """The category's events below the group's checkpoint: every one its catch-up handled."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM message_store.messages"
            " WHERE message_store.category(stream_name) = %(category)s"
            " AND global_position < (SELECT position FROM projector.checkpoints"
            "   WHERE group_name = %(group)s AND category = %(category)s)",
            {"group": group, "category": category},
        ).fetchone()
    return 0 if row is None else int(row[0])


def _head(url: str, category: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(max(global_position), 0) FROM message_store.messages"
            " WHERE message_store.category(stream_name) = %s",
            (category,),
        ).fetchone()
    return 0 if row is None else int(row[0])


def _clean_up(url: str, name: str, category: str, head: int) -> None:
    """Everything the round made: the writer's events, the versions' schemas and rows."""
    groups = [name, f"{name}_v2", f"{name}_again"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM message_store.messages"
            " WHERE message_store.category(stream_name) = %s AND global_position > %s",
            (category, head),
        )
        for schema in (name, f"{name}_v1", f"{name}_v2", f"{name}_again", f"{name}_again_v1"):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        conn.execute(
            "DELETE FROM projector.projection_versions WHERE projection = ANY(%s)",
            ([name, f"{name}_again"],),
        )
        for table in ("checkpoints", "stream_positions", "held_streams"):
            conn.execute(
                sql.SQL("DELETE FROM projector.{} WHERE group_name = ANY(%s)").format(
                    sql.Identifier(table)
                ),
                (groups,),
            )


def table(outcome: Outcome) -> str:
    rows: list[tuple[str, ...]] = [("round", "side", "events", "seconds", "events/s")]
    for index, rebuilt in enumerate(outcome.rebuilds):
        before, after = outcome.catchups[2 * index : 2 * index + 2]
        for side, measure in (("catch-up", before), ("rebuild", rebuilt), ("catch-up", after)):
            rows.append(
                (
                    str(index + 1),
                    side,
                    f"{measure.events:,}",
                    f"{measure.seconds:.2f}",
                    f"{measure.rate:,.0f}",
                )
            )
    ratio = "" if outcome.ratio is None else f"{outcome.ratio:.2f}x"
    cpu = ", ".join(f"{seconds:g} s" for seconds in outcome.live_cpu)
    rounds = ", ".join(f"{ratio:.2f}x" for ratio in outcome.ratios)
    lines = [
        "rebuild  a new version projected from the start beside the live version, against a "
        f"plain catch-up before and after it, a writer appending all through; rebuild / "
        f"catch-up rate by round {rounds}, median {ratio} (target >= {TARGET}x); "
        "events the writer wrote "
        f"{outcome.written:,}; the live version's CPU during each rebuild: {cpu}",
        *report.render(rows, left=2),
    ]
    lines.extend(f"note: rebuild: {note}" for note in outcome.notes)
    return "\n".join(lines)


def json_line(outcome: Outcome, context: dict[str, Any]) -> str:
    record = {
        "scenario": "rebuild",
        "catchups": [asdict(m) for m in outcome.catchups],
        "rebuilds": [asdict(m) for m in outcome.rebuilds],
        "ratio": outcome.ratio,
        "round_ratios": outcome.ratios,
        "target": TARGET,
        "written": outcome.written,
        "live_cpu_s": outcome.live_cpu,
        "notes": outcome.notes,
    }
    return json.dumps({**record, **context})


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
