"""The elastic command's report (see `bench.elastic`): a small table per measurement, for
people, then one JSON line per measurement, for scripts, as `bench.report` does for the others.
Its figures are not ratios to a baseline, so they have a table of their own."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict
from typing import Any

from bench import report
from bench.elastic import WRITER_STREAMS, Catchup, Join, Outcome, Rebalances

JOIN_TARGET_S = 2.0  # the issue's: a joining member projects within 2 s of its start
CORES = os.cpu_count() or 1


def table(outcome: Outcome) -> str:
    e, s = outcome.elasticity, outcome.sizes
    settings = f"heartbeat {e.heartbeat:g} s, bucket lease {e.lease:g} s, {e.buckets} buckets"
    lines = [
        f"elastic-join  a member joins one caught up, a writer at {s.elastic_rate:g} events/s "
        f"over {WRITER_STREAMS} streams; {settings}",
        *report.render(_join_rows(outcome.rebalances.joins), left=1),
        "",
        f"elastic-rebalance  {s.elastic_joins} join(s) and {s.elastic_joins} graceful "
        "leave(s) (SIGTERM) while the writer appends; every handler call against "
        "message_store.messages",
        *report.render(_rebalance_rows(outcome.rebalances), left=0),
        "",
        f"elastic-catchup  {s.elastic_events:,} events over {s.streams:,} streams, no-op "
        f"handler, bucket index, members settled before the backlog appears; {settings}; "
        f"{CORES} cores: more members than cores cannot scale linearly",
        *report.render(_catchup_rows(outcome.catchups), left=0),
    ]
    lines.extend(f"note: elastic: {note}" for note in outcome.notes)
    return "\n".join(lines)


def _join_rows(joins: list[Join]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("join", "start to first event s", "start to first bucket s", "bucket to event s", "target")
    ]
    for index, join in enumerate(joins, 1):
        rows.append(
            (
                str(index),
                f"{join.to_first_event:.2f}",
                f"{join.to_acquired:.2f}",
                f"{join.acquired_to_first_event:.2f}",
                f"< {JOIN_TARGET_S:g} s: {_yes(join.to_first_event < JOIN_TARGET_S)}",
            )
        )
    return rows


def _rebalance_rows(found: Rebalances) -> list[tuple[str, ...]]:
    settled = ", ".join(f"{s:.2f}" for s in found.leave_settled_s)
    return [
        ("events written", "delivered again", "missed", "leave to taken s", "target"),
        (
            f"{found.written:,}",
            str(found.redelivered),
            str(found.missed),
            settled,
            f"0 again: {_yes(found.redelivered == 0)}",
        ),
    ]


def _catchup_rows(catchups: list[Catchup]) -> list[tuple[str, ...]]:
    base = _one_member_rate(catchups)
    rows: list[tuple[str, ...]] = [("members", "events", "seconds", "events/s", "ratio to 1")]
    for c in catchups:
        ratio = f"{c.events_per_s / base:.2f}x" if base else ""
        figures = (f"{c.events:,}", f"{c.seconds:.2f}", f"{c.events_per_s:,}", ratio)
        rows.append((str(c.members), *figures))
    return rows


def json_lines(outcome: Outcome, context: dict[str, Any]) -> str:
    common = {**asdict(outcome.elasticity), "notes": outcome.notes, **context}
    records = [_join_record(outcome.rebalances), _rebalance_record(outcome.rebalances)]
    records.append({"scenario": "elastic-catchup", "cores": CORES, "runs": _catchup_runs(outcome)})
    return "\n".join(json.dumps({**record, **common}) for record in records)


def _join_record(found: Rebalances) -> dict[str, Any]:
    to_first = [join.to_first_event for join in found.joins]
    return {
        "scenario": "elastic-join",
        "joins": [
            {**asdict(join), "acquired_to_first_event": join.acquired_to_first_event}
            for join in found.joins
        ],
        "median_to_first_event_s": round(statistics.median(to_first), 3) if to_first else None,
        "target_s": JOIN_TARGET_S,
        "met": bool(to_first) and max(to_first) < JOIN_TARGET_S,
    }


def _rebalance_record(found: Rebalances) -> dict[str, Any]:
    return {
        "scenario": "elastic-rebalance",
        "joins": len(found.joins),
        "leaves": len(found.leave_settled_s),
        "written": found.written,
        "stored": found.stored,
        "redelivered": found.redelivered,
        "missed": found.missed,
        "leave_settled_s": [round(seconds, 3) for seconds in found.leave_settled_s],
        "target": 0,
        "met": found.redelivered == 0 and found.missed == 0,
    }


def _catchup_runs(outcome: Outcome) -> list[dict[str, Any]]:
    base = _one_member_rate(outcome.catchups)
    return [
        {
            **asdict(c),
            "events_per_s": c.events_per_s,
            "ratio": round(c.events_per_s / base, 3) if base else None,
        }
        for c in outcome.catchups
    ]


def _one_member_rate(catchups: list[Catchup]) -> int:
    return next((c.events_per_s for c in catchups if c.members == 1), 0)


def _yes(met: bool) -> str:
    return "yes" if met else "no"
