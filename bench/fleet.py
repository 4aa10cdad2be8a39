"""The processes of one elastic group in the elastic benchmark: `projector run --elastic`,
started and stopped as an operator would (SIGTERM is a graceful leave), each logging JSON lines
to a file of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from bench.scenarios import ROOT

SETTLE = 60.0  # seconds a rebalance or a catch-up may take on a loaded machine
LEASES = """
SELECT owner FROM projector.bucket_leases WHERE group_name = %s AND owner IS NOT NULL
"""


@dataclass(frozen=True)
class Elasticity:
    """The group's elastic settings, the same for every member."""

    buckets: int
    heartbeat: float
    lease: float


@dataclass
class Member:
    """One member process; ``started`` is the wall time just before it was started."""

    popen: subprocess.Popen[bytes]
    log: Path
    started: float
    stopped_on_purpose: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: the member drains, commits, releases its buckets and exits."""
        self.stopped_on_purpose = True
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.popen.kill()
            self.popen.wait()
            raise SystemExit(
                f"bench: member {self.pid} ignored SIGTERM:\n{self.log_tail()}"
            ) from exc

    def first_acquired(self) -> float | None:
        """The wall time of this member's first ``bucket_acquired`` record, if it logged one."""
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("action") == "bucket_acquired":
                    return datetime.fromisoformat(record["time"]).timestamp()
        return None

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Fleet:
    """The member processes of one group, all projecting ``target`` from one category."""

    url: str
    group: str
    category: str
    target: str  # MODULE:ATTR, a projection of `bench.members`
    elasticity: Elasticity
    logs: Path
    env: dict[str, str]
    batch_size: int = 500
    members: list[Member] = field(default_factory=list)

    def spawn(self) -> Member:
        e = self.elasticity
        log = self.logs / f"{self.group}-{len(self.members) + 1}.log"
        command = [
            *(sys.executable, "-m", "projector", "run", self.target),
            *("--group", self.group, "--category", self.category, "--elastic"),
            *("--buckets", str(e.buckets), "--heartbeat", f"{e.heartbeat:g}"),
            *("--bucket-lease", f"{e.lease:g}", "--batch-size", str(self.batch_size)),
            # A catch-up's end is seen in the checkpoints: let them follow within a second.
            *("--checkpoint-interval", "1"),
            *("--log-format", "json", "--summary-interval", "0", "--no-progress"),
        ]
        with log.open("wb") as out:
            started = time.time()
            popen = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        member = Member(popen, log, started)
        self.members.append(member)
        return member

    def live(self) -> list[Member]:
        return [m for m in self.members if m.popen.poll() is None]

    def settled(self, members: list[Member]) -> bool:
        """Every bucket held, evenly, by exactly ``members`` (and nobody died unasked)."""
        self.check_alive()
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(LEASES, (self.group,)).fetchall()
        # A member id is <host>-<pid>-<suffix>; the host may hold dashes of its own.
        owners = Counter(int(owner.rsplit("-", 2)[-2]) for (owner,) in rows)
        shares = sorted(owners.values())
        return (
            set(owners) == {m.pid for m in members}
            and sum(shares) == self.elasticity.buckets
            and shares[-1] - shares[0] <= 1
        )

    def wait_settled(self, members: list[Member]) -> float:
        """Seconds until ``members`` share every bucket evenly."""
        pids = [m.pid for m in members]
        return self.wait(lambda: self.settled(members), f"buckets spread over {pids}")

    def wait(self, condition: Callable[[], bool], what: str, *, within: float = SETTLE) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > within:
                tails = "\n".join(f"member {m.pid}:\n{m.log_tail()}" for m in self.members)
                raise SystemExit(f"bench: {self.group}: no {what} within {within:g} s\n{tails}")
            time.sleep(0.05)
        return time.monotonic() - started

    def check_alive(self) -> None:
        for member in self.members:
            if member.popen.poll() is not None and not member.stopped_on_purpose:
                raise SystemExit(
                    f"bench: member {member.pid} of {self.group} exited "
                    f"({member.popen.returncode}):\n{member.log_tail()}"
                )

    def stop(self) -> None:
        for member in self.live():
            member.stop()
