"""``python -m bench takeover``: how soon a fixed member projects again once its process is
killed while a hot standby waits, against how soon a member started cold projects, in the same
run (README, "Fixed or elastic?": a killed member is taken over within a second).

A writer appends to a category of its own (the elastic join scenario's writer), and every
handler call is recorded (`bench.members.calls`). Each of ``takeover_runs`` rounds:

- **cold**: a member (`projector run --member 0 --group-size 1`) starts with nothing running:
  seconds from its process start to its first handler call;
- **takeover**: a second process starts as its hot standby; once it logs ``standby_waiting``,
  the first is SIGKILLed: seconds from the kill to the standby's first handler call. Then the
  standby stops (SIGTERM) and the next round starts cold.

Reported as seconds and as the takeover's ratio to the cold start (medians), with the events
written and any never handled (a takeover must miss nothing: target 0).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import report
from bench.elastic import (
    CALLS_TABLE,
    WRITER_STREAMS,
    category_head,
    deliveries,
    first_call,
    member_env,
)
from bench.scenarios import ROOT, Sizes
from bench.tail import SteadyWriter

WITHIN = 60.0  # seconds any step may take on a loaded machine


@dataclass(frozen=True)
class Round:
    cold_s: float  # process start to first handler call, nothing running before
    takeover_s: float  # SIGKILL of the running member to the standby's first handler call


@dataclass
class Outcome:
    rounds: list[Round]
    written: int = 0
    missed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        cold = statistics.median(r.cold_s for r in self.rounds) if self.rounds else 0.0
        takeover = statistics.median(r.takeover_s for r in self.rounds) if self.rounds else 0.0
        return round(takeover / cold, 3) if cold else None


@dataclass
class _Runner:
    popen: subprocess.Popen[bytes]
    log: Path
    started: float  # wall time just before it was started

    def logged(self, action: str) -> bool:
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("action") == action:
                return True
        return False

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])


def run(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> Outcome:
    category, table = f"bench_takeover_{run_id}", f"bench_{run_id}_takeover_calls"
    env = {**member_env(url, settings), "BENCH_CALLS_TABLE": table}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL(CALLS_TABLE).format(table=sql.Identifier(table)))
    _say(
        f"takeover: {sizes.takeover_runs} round(s) of a cold start, then a SIGKILL with a hot "
        f"standby waiting; a writer at {sizes.elastic_rate:g} events/s"
    )
    outcome = Outcome([])
    writer = SteadyWriter(url, category, sizes.elastic_rate, streams=WRITER_STREAMS)
    runners: list[_Runner] = []
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as folder:
        try:
            writer.start()
            for index in range(sizes.takeover_runs):
                outcome.rounds.append(_round(url, table, category, env, Path(folder), runners))
                _say(f"  round {index + 1}: {outcome.rounds[-1]}")
            writer.stop()
            outcome.written = writer.written
            head = category_head(url, category)
            runner = _start(category, env, Path(folder), "last", runners)
            _wait(lambda: deliveries(url, table, category, head)[0] == 0, "the last events")
            _stop(runner)
            outcome.missed = deliveries(url, table, category, head)[0]
        finally:
            writer.stop()
            for runner in runners:
                if runner.popen.poll() is None:
                    runner.popen.kill()
                    runner.popen.wait()
            _clean_up(url, category, table)
    if outcome.missed:
        outcome.notes.append(f"{outcome.missed} event(s) written were never handled")
    return outcome


def _round(
    url: str, table: str, category: str, env: dict[str, str], logs: Path, runners: list[_Runner]
) -> Round:
    cold = _start(category, env, logs, f"cold{len(runners)}", runners)
    _wait(lambda: first_call(url, table, cold.popen.pid) is not None, "the cold start's call")
    cold_first = first_call(url, table, cold.popen.pid)
    standby = _start(category, env, logs, f"standby{len(runners)}", runners)
    _wait(lambda: standby.logged("standby_waiting"), "the standby waiting")
    killed = time.time()
    cold.popen.send_signal(signal.SIGKILL)
    cold.popen.wait()
    _wait(lambda: first_call(url, table, standby.popen.pid) is not None, "the standby's call")
    standby_first = first_call(url, table, standby.popen.pid)
    assert cold_first is not None
    assert standby_first is not None
    _stop(standby)
    return Round(round(cold_first - cold.started, 3), round(standby_first - killed, 3))


def _start(
    category: str, env: dict[str, str], logs: Path, name: str, runners: list[_Runner]
) -> _Runner:
    log = logs / f"{name}.log"
    command = [
        *(sys.executable, "-m", "projector", "run", "bench.members:calls"),
        *("--group", f"{category}_group", "--category", category),
        *("--member", "0", "--group-size", "1", "--checkpoint-interval", "0.2"),
        *("--log-format", "json", "--log-level", "INFO"),
        *("--summary-interval", "0", "--no-progress"),
    ]
    with log.open("wb") as out:
        started = time.time()
        popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    runner = _Runner(popen, log, started)
    runners.append(runner)
    return runner


def _stop(runner: _Runner) -> None:
    runner.popen.send_signal(signal.SIGTERM)
    if runner.popen.wait(timeout=WITHIN) != 0:
        raise SystemExit(f"bench: takeover: a member did not stop cleanly:\n{runner.tail()}")


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: takeover: no {what} within {WITHIN:g} s")
        time.sleep(0.01)


def _clean_up(url: str, category: str, table: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM message_store.messages WHERE stream_name LIKE %s", (f"{category}-%",)
        )
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def table(outcome: Outcome) -> str:
    rows: list[tuple[str, ...]] = [("round", "cold start to call s", "kill to standby call s")]
    rows.extend(
        (str(index), f"{r.cold_s:.2f}", f"{r.takeover_s:.2f}")
        for index, r in enumerate(outcome.rounds, 1)
    )
    ratio = "" if outcome.ratio is None else f"{outcome.ratio:.2f}x"
    lines = [
        "takeover  a fixed member SIGKILLed with its hot standby waiting, against a cold start; "
        f"takeover / cold start (medians): {ratio}; events written {outcome.written:,}, "
        f"missed {outcome.missed}",
        *report.render(rows, left=1),
    ]
    lines.extend(f"note: takeover: {note}" for note in outcome.notes)
    return "\n".join(lines)


def json_line(outcome: Outcome, context: dict[str, Any]) -> str:
    record = {
        "scenario": "takeover",
        "rounds": [asdict(r) for r in outcome.rounds],
        "ratio": outcome.ratio,
        "written": outcome.written,
        "missed": outcome.missed,
        "notes": outcome.notes,
    }
    return json.dumps({**record, **context})


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)

