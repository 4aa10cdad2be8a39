"""The fault suite's parts: a server of its own with the real Message DB, writer processes,
groups of runner processes (each member with a hot standby), random faults, and the checks
against an independent fold of ``message_store.messages``.

Everything here is a real process or a real server: runners are `projector run` commands,
writers write with ``write_message``, faults are signals, ``pg_ctl`` and
``pg_terminate_backend``, and a rebalance is `projector rebalance`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from projector.errors import ConfigurationError
from projector.localpg import LocalCluster
from projector.model.events import consumer_group_member
from projector.storage import checkpoints, member_locks
from projector.storage.migrate import upgrade
from tests.support import messagedb
from tests.support.waiting import wait_until

CATEGORIES = ("faultA", "faultB", "faultC")
STREAMS_PER_CATEGORY = 200
REFUSED_START = "cannot connect to the database"  # in the text and in the JSON error line
LEASE_TIMEOUT = 3.0
MAX_CONNECTIONS = 400  # seconds: short, so that a SIGSTOP outlasts it and a standby takes over
ROOT = Path(__file__).resolve().parents[2]

TABLES = """
CREATE TABLE fault_totals (
    stream text PRIMARY KEY,
    total bigint NOT NULL,
    applied bigint NOT NULL,
    last_position bigint NOT NULL,
    gaps int NOT NULL
);
CREATE TABLE fault_elastic_totals (LIKE fault_totals INCLUDING ALL);
CREATE TABLE fault_deliveries (
    seq bigserial PRIMARY KEY,
    stream text NOT NULL,
    position bigint NOT NULL,
    pid int NOT NULL
);
CREATE INDEX ON fault_deliveries (stream, position);
"""

FOLD = """
SELECT stream_name, sum((data->>'n')::bigint), count(*), max(position)
FROM message_store.messages
WHERE category(stream_name) = ANY (%(categories)s)
GROUP BY stream_name
"""


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=5,
        application_name="fault-harness",
        options="-c search_path=public,message_store",
    )


@dataclass
class Server:
    """A cluster of the suite's own (it is restarted), with one database holding Message DB
    1.3.1, projector's tables and the read models."""

    cluster: LocalCluster
    url: str
    # Fast shutdowns that outlasted pg_ctl's wait, each with the server log's last lines.
    slow_stops: list[str] = field(default_factory=list)
    # Immediate stops that outlasted it too: what the server's processes were doing.
    hung_stops: list[str] = field(default_factory=list)

    @classmethod
    def install(cls, cluster: LocalCluster, scripts: Path) -> Server:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
            # Sixteen runners, each transactional one with up to 16 connections (docs,
            # Privileges and connections), overlapping zombies, writers and the harness.
            conn.execute(f"ALTER SYSTEM SET max_connections = {MAX_CONNECTIONS}")
            # The throwaway cluster turns synchronous_commit off, so an immediate restart may
            # lose commits it acknowledged: a handler's recorded call, then a checkpoint past
            # it (a "missed" event no real server would lose). On, a commit is written to the
            # OS before it is acknowledged, which a server crash cannot lose (fsync stays off:
            # the machine does not crash). Set on the database: the command line outranks
            # ALTER SYSTEM.
            conn.execute("ALTER DATABASE faults SET synchronous_commit = on")
        cluster.stop()
        cluster.start()
        url = urlunsplit(urlsplit(cluster.url)._replace(path="/faults"))
        messagedb.install(url, scripts)
        upgrade(url)
        with connect(url) as conn:
            conn.execute(TABLES.encode())
        return cls(cluster, url)

    def restart(self, mode: str, *, down_for: float) -> None:
        try:
            self.cluster.stop(mode=mode)
        except ConfigurationError:
            if mode != "fast":
                raise
            # A fast shutdown waits for every session to end and for a checkpoint: on a loaded
            # machine that can outlast pg_ctl's wait (the cluster's start_timeout, 30 s). A
            # supervisor would then kill it.
            self.slow_stops.append(self.cluster.log_file.read_text(errors="replace")[-2000:])
            try:
                self.cluster.stop(mode="immediate")
            except ConfigurationError:
                # Not even that ended it (seen once, 2026-12-07): a supervisor's last resort,
                # SIGKILL to every process of the server, keeping what they were doing.
                self.hung_stops.append(_kill_server(self.cluster.data_dir))
        time.sleep(down_for)
        self.cluster.start()

    def query(self, statement: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of ``statement``, retried while the server is coming back."""
        deadline = time.monotonic() + 60
        while True:
            try:
                with connect(self.url) as conn:
                    return conn.execute(statement, params).fetchall()
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _kill_server(data_dir: Path) -> str:
    """SIGKILL the postmaster of ``data_dir`` and its children; what each was doing before
    (state, kernel wait channel, command line), one line each."""
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return "no postmaster.pid"
    pids = [postmaster, *_children(postmaster)]
    seen = [_process_line(pid) for pid in pids]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return "\n".join(seen)


def _children(parent: int) -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(_stat(proc)[1]) == parent:
                found.append(int(proc.name))
    return found


def _stat(proc: Path) -> list[str]:
    """A process's /proc stat fields after its command's closing parenthesis: its state, then
    its parent, and so on."""
    return (proc / "stat").read_text().rpartition(")")[2].split()


def _process_line(pid: int) -> str:
    proc = Path(f"/proc/{pid}")
    try:
        state = _stat(proc)[0]
        wchan = (proc / "wchan").read_text()
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid}: gone"
    return f"{pid} {state} {wchan or '-'} {command.strip()}"


@dataclass
class Process:
    """One process the suite started, and whether the suite itself ended it."""

    popen: subprocess.Popen[bytes]
    log: Path
    label: str
    stopped_on_purpose: bool = False
    paused: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, signum: signal.Signals) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signum)

    def kill(self) -> None:
        self.stopped_on_purpose = True
        self.resume()
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def pause(self) -> None:
        self.paused = True
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: stop reading, finish running calls, commit, exit."""
        self.stopped_on_purpose = True
        self.resume()
        self.signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def died_unasked(self) -> bool:
        return self.popen.poll() is not None and not self.stopped_on_purpose

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def describe(self) -> str:
        """For a failure message: which process, how it ended, and its log's last lines."""
        return f"{self.label} (pid {self.pid}, exit {self.popen.returncode}):\n{self.log_tail()}"


def run_runner(
    server: Server, log: Path, arguments: list[str], label: str, *, flaky: float = 0.0
) -> Process:
    """Start ``projector run`` with ``arguments`` on every category of the suite, with what
    every runner of the suites shares: quick polling, a short connect timeout, outages ridden
    out for the whole run, JSON logs into ``log``; its handlers fail at the rate ``flaky``
    for a tenth of the streams (`tests.faults.flaky`), with attempts enough never to park."""
    command = [
        *(sys.executable, "-m", "projector", "run", *arguments),
        *(arg for category in CATEGORIES for arg in ("--category", category)),
        *("--tail-sleep", "0.05", "--connect-timeout", "2", "--outage-limit", "300"),
        *("--log-format", "json", "--summary-interval", "0", "--no-progress"),
        *(("--retry-max-attempts", "1000") if flaky else ()),
    ]
    env = {
        **os.environ,
        "PROJECTOR_DATABASE_URL": server.url,
        "PYTHONPATH": str(ROOT),
        "PYTHONFAULTHANDLER": "1",  # a runner that crashes in C says where
        "FAULT_FLAKY_RATE": str(flaky),
    }
    with log.open("wb") as out:
        popen = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Process(popen, log, label)


@dataclass
class Group:
    """The runner processes of one group: two per member (one projects, one waits as its
    hot standby). Killed runners are replaced at once, as a supervisor would."""

    name: str
    target: str
    server: Server
    logs: Path
    size: int
    flaky: float = 0.0  # how often its handlers fail for a flaky stream
    processes: dict[int, list[Process]] = field(default_factory=dict)
    retired: list[Process] = field(default_factory=list)
    started: int = 0
    resized_before_any_checkpoint: int = 0

    def start(self) -> None:
        for member in range(self.size):
            self.processes[member] = [self._spawn(member), self._spawn(member)]

    def _spawn(self, member: int) -> Process:
        self.started += 1
        log = self.logs / f"{self.name}-{self.size}-{member}-{self.started}.log"
        arguments = [
            *(self.target, "--group", self.name),
            *("--member", str(member), "--group-size", str(self.size)),
            *("--batch-size", "100", "--checkpoint-interval", "0.2"),
            *("--lease-timeout", str(LEASE_TIMEOUT)),
            *("--retry-base", "0.05", "--retry-cap", "1"),
        ]
        label = f"{self.name} member {member}"
        return run_runner(self.server, log, arguments, label, flaky=self.flaky)

    def all(self) -> list[Process]:
        return [process for processes in self.processes.values() for process in processes]

    def kill_and_replace(self, process: Process) -> None:
        member = next(m for m, found in self.processes.items() if process in found)
        process.kill()
        self.retired.append(process)
        self.processes[member] = [
            *(p for p in self.processes[member] if p is not process),
            self._spawn(member),
        ]

    def supervise(self) -> int:
        """Start again, as a supervisor would, the runners that exited because the server
        refused their first connection (it was restarting): by design a runner that cannot
        connect at all says so and exits, and only one that connected rides out outages.
        Returns how many were started again; any other exit is left for the checks."""
        again = 0
        for member, processes in self.processes.items():
            for process in list(processes):
                if process.died_unasked() and REFUSED_START in process.log_tail(3):
                    process.stopped_on_purpose = True
                    self.retired.append(process)
                    processes[processes.index(process)] = self._spawn(member)
                    again += 1
        return again

    def holder(self, member: int) -> Process | None:
        """The process holding the member's lock now, if the suite knows it."""
        rows = self.server.query(member_locks.HOLDER, member_locks.lock_ids(self.name, member))
        if not rows:
            return None
        found = re.search(r"pid (\d+)", rows[0][0] or "")
        pid = int(found.group(1)) if found else None
        return next((p for p in self.processes[member] if p.pid == pid), None)

    def _lock_free(self, member: int) -> bool:
        return not self.server.query(member_locks.HOLDER, member_locks.lock_ids(self.name, member))

    def resize(self, size: int) -> None:
        """Kill every runner, rebalance the group to ``size``, start the new members."""
        for process in self.all():
            process.kill()
            self.retired.append(process)
        # A killed runner's session, and any commit it had sent, ends a moment after it.
        wait_until(
            lambda: all(self._lock_free(member) for member in range(self.size)),
            within=30,
            what=f"{self.name}'s killed runners to let go of their locks",
        )
        self.processes = {}
        if self.server.query(checkpoints.GROUP_SIZES, {"group": self.name}):
            rebalance(self.server, self.name, size)
        else:
            # No member got as far as its first checkpoint (faults from the start on a slow
            # machine): as `projector rebalance` then tells an operator, members start at the
            # new size, with nothing to wipe.
            self.resized_before_any_checkpoint += 1
        self.size = size
        self.start()

    def stop(self) -> None:
        for process in self.all():
            process.stop()

    def unasked_exits(self) -> list[Process]:
        return [p for p in [*self.retired, *self.all()] if p.died_unasked()]

    def logged(self) -> Counter[str]:
        return logged([*self.retired, *self.all()])

    def handovers(self) -> int:
        return handovers([*self.retired, *self.all()])


def records(process: Process) -> list[dict[str, Any]]:
    """The JSON log records of a process."""
    found = []
    for line in process.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def logged(processes: list[Process]) -> Counter[str]:
    """How often each ``action`` was logged, over ``processes``."""
    return Counter(record.get("action", "") for p in processes for record in records(p))


def handovers(processes: list[Process]) -> int:
    """Held streams that rejoined the flow in a process that never held them: taken over
    from a process killed, paused past its lease, or rebalanced away."""
    held: dict[str, set[int]] = {}
    rejoined: list[tuple[str, int]] = []
    for process in processes:
        for record in records(process):
            action, stream = record.get("action"), str(record.get("stream"))
            if action == "stream_retry_scheduled" and "delay" in record:
                held.setdefault(stream, set()).add(process.pid)
            elif action == "stream_rejoined":
                rejoined.append((stream, process.pid))
    return sum(1 for stream, pid in rejoined if pid not in held.get(stream, set()))


# An elastic member's timing in the suites: a short lease, so that a SIGSTOP outlasts it.
BUCKETS = 16
HEARTBEAT = 0.2
BUCKET_LEASE = 2.0
SETTLE = 60.0  # seconds a rebalance or a catch-up may take on a loaded machine


@dataclass
class Elastic:
    """The processes of one elastic group (`projector run --elastic`), started and stopped as
    an operator would; ``size`` is how many should be running. Killed runners are replaced at
    once, as a Deployment's controller would."""

    name: str
    server: Server
    logs: Path
    projection: str = "tests.faults.projections:calls"
    size: int = 0
    flaky: float = 0.0  # how often its handlers fail for a flaky stream
    processes: list[Process] = field(default_factory=list)
    started: int = 0

    def spawn(self) -> Process:
        self.started += 1
        log = self.logs / f"{self.name}-{self.started}.log"
        arguments = [
            *(self.projection, "--group", self.name, "--elastic", "--buckets", str(BUCKETS)),
            *("--heartbeat", str(HEARTBEAT), "--bucket-lease", str(BUCKET_LEASE)),
            *("--batch-size", "50", "--checkpoint-interval", "1"),
            *("--retry-base", "0.05", "--retry-cap", "1"),
        ]
        label = f"{self.name} {self.started}"
        process = run_runner(self.server, log, arguments, label, flaky=self.flaky)
        self.processes.append(process)
        return process

    def start(self) -> None:
        for _ in range(self.size):
            self.spawn()

    def live(self) -> list[Process]:
        return [p for p in self.processes if p.popen.poll() is None and not p.paused]

    def all(self) -> list[Process]:
        """The processes still running (paused ones included)."""
        return [p for p in self.processes if p.popen.poll() is None]

    def holder(self, member: int) -> Process | None:
        return None  # buckets, not members: `Faults` pauses any of the processes

    def kill_and_replace(self, process: Process) -> None:
        process.kill()
        self.spawn()

    def supervise(self) -> int:
        """Start again the runners the server refused at their first connection (see
        `Group.supervise`); any other exit is left for the checks."""
        again = 0
        for process in list(self.processes):
            if process.died_unasked() and REFUSED_START in process.log_tail(3):
                process.stopped_on_purpose = True
                self.spawn()
                again += 1
        return again

    def resize(self, size: int) -> None:
        """Scale to ``size`` processes while they run: SIGTERM (a graceful leave) or start."""
        running = self.all()
        for process in running[size:]:
            process.stop()
        for _ in range(size - len(running)):
            self.spawn()
        self.size = size

    def owners(self) -> Counter[int]:
        """Buckets held per process id (expired leases included: nobody has taken them)."""
        rows = self.server.query(
            "SELECT owner FROM projector.bucket_leases WHERE group_name = %(group)s"
            " AND owner IS NOT NULL",
            {"group": self.name},
        )
        return Counter(member_pid(owner) for (owner,) in rows)

    def settled(self, processes: list[Process]) -> bool:
        """Every bucket held, evenly, by exactly ``processes``."""
        owners = self.owners()
        shares = sorted(owners.values())
        return (
            set(owners) == {p.pid for p in processes}
            and sum(shares) == BUCKETS
            and shares[-1] - shares[0] <= 1
        )

    def wait_settled(self, processes: list[Process]) -> None:
        wait_until(
            lambda: self.settled(processes),
            within=SETTLE,
            poll=0.1,
            what=f"{self.name}'s buckets spread over {[p.pid for p in processes]}",
        )

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def __enter__(self) -> Elastic:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def unasked_exits(self) -> list[Process]:
        return [p for p in self.processes if p.died_unasked()]

    def logged(self) -> Counter[str]:
        return logged(self.processes)

    def handovers(self) -> int:
        return handovers(self.processes)


def member_pid(owner: str) -> int:
    """The process id in an elastic member id, ``<host>-<pid>-<suffix>``."""
    return int(owner.rsplit("-", 2)[-2])


def rebalance(server: Server, group: str, size: int) -> None:
    """`projector rebalance` of a group whose runners were just killed: their sessions, and
    their locks, end a moment after the processes, and until then it refuses, naming them."""
    command = [sys.executable, "-m", "projector", "rebalance", "--group", group]
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            [*command, "--group-size", str(size)],
            capture_output=True,
            text=True,
            env={**os.environ, "PROJECTOR_DATABASE_URL": server.url},
            cwd=ROOT,
            check=False,
            timeout=60,
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"rebalance of {group} failed: {done.stderr}")
        time.sleep(0.5)


@dataclass
class Writers:
    """Writer processes appending to every category until stopped."""

    server: Server
    logs: Path
    processes: list[Process] = field(default_factory=list)

    def start(
        self, count: int, *, rate: float, seed: int, streams: int = STREAMS_PER_CATEGORY
    ) -> None:
        """``count`` writers, each appending ``rate`` events a second to ``streams`` streams
        of each category."""
        for index in range(count):
            log = self.logs / f"writer-{index}.log"
            command = [
                *(sys.executable, "-m", "tests.faults.writer", self.server.url),
                *(str(seed * 100 + index), ",".join(CATEGORIES)),
                *(str(streams), str(rate)),
            ]
            with log.open("wb") as out:
                popen = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.processes.append(Process(popen, log, f"writer {index}"))

    def stop(self) -> None:
        """Stop every writer, and wait until the server has ended their sessions: a COMMIT
        sent just before a writer stopped may still land, after which the store is final."""
        for process in self.processes:
            process.stop()
        deadline = time.monotonic() + 30
        while self.server.query(WRITER_SESSIONS)[0][0] > 0:
            if time.monotonic() > deadline:
                raise AssertionError("the writers' sessions did not end")
            time.sleep(0.1)


WRITER_SESSIONS = """
SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fault-writer'
"""

FAULT_WEIGHTS = {
    "sigkill": 4,
    "sigstop": 2,
    "terminate": 3,
    "restart_fast": 1,
    "restart_immediate": 1,
}

RUNNER_SESSIONS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND (application_name = '' OR application_name LIKE 'projector%%'
       OR application_name = 'fault-handler')
  AND pid <> pg_backend_pid()
"""


def terminate_sessions(server: Server, rng: random.Random) -> None:
    """``pg_terminate_backend`` one to three of the runners' (and their handlers') sessions."""
    pids = [row[0] for row in server.query(RUNNER_SESSIONS)]
    for pid in rng.sample(pids, min(len(pids), rng.randint(1, 3))):
        server.query("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid})


@dataclass
class Faults:
    """Random faults against the runners and the server, from one seed, counted by kind."""

    server: Server
    groups: list[Group | Elastic]
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)
    paused: list[tuple[Process, float]] = field(default_factory=list)
    refused_starts: int = 0  # runners started again after the server refused them

    def inject(self) -> str:
        kinds = list(FAULT_WEIGHTS)
        kind = self.rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]
        getattr(self, f"_{kind}")()
        self.counts[kind] += 1
        return kind

    def resume_due(self, *, everything: bool = False) -> None:
        """SIGCONT the paused runners whose pause is over (or all of them)."""
        now = time.monotonic()
        for process, until in list(self.paused):
            if everything or now >= until:
                process.resume()
                self.paused.remove((process, until))

    def supervise(self) -> None:
        self.refused_starts += sum(group.supervise() for group in self.groups)

    def rebalance(self, size: int) -> None:
        self.resume_due(everything=True)
        for group in self.groups:
            group.resize(size)
        self.counts[f"rebalance_to_{size}"] += 1

    def _sigkill(self) -> None:
        group = self.rng.choice(self.groups)
        process = self.rng.choice(group.all())
        self.paused = [(p, until) for p, until in self.paused if p is not process]
        group.kill_and_replace(process)

    def _sigstop(self) -> None:
        # The member's active runner, past its lease: its standby takes over while it sleeps,
        # and it wakes up a zombie.
        group = self.rng.choice(self.groups)
        process = group.holder(self.rng.randrange(group.size))
        if process is None or process.paused:
            process = self.rng.choice(group.all())
        if not process.paused:
            process.pause()
            self.paused.append(
                (process, time.monotonic() + LEASE_TIMEOUT + self.rng.uniform(0.5, 2))
            )

    def _terminate(self) -> None:
        terminate_sessions(self.server, self.rng)

    def _restart_fast(self) -> None:
        self.server.restart("fast", down_for=self.rng.uniform(0, 2))

    def _restart_immediate(self) -> None:
        self.server.restart("immediate", down_for=self.rng.uniform(0, 2))


@dataclass(frozen=True)
class Fold:
    """Per stream, straight from message_store.messages: sum of n, events, last position."""

    streams: dict[str, tuple[int, int, int]]

    @classmethod
    def of(cls, server: Server) -> Fold:
        rows = server.query(FOLD, {"categories": list(CATEGORIES)})
        return cls({name: (int(total), int(count), int(last)) for name, total, count, last in rows})

    @property
    def events(self) -> int:
        return sum(count for _, count, _ in self.streams.values())


def totals_caught_up(server: Server, fold: Fold, table: str = "fault_totals") -> bool:
    """Every stream of the fold applied up to its last event (rightly or not)."""
    rows = server.query(f"SELECT stream, last_position FROM {table}")
    last = dict(rows)
    return all(last.get(name) == end for name, (_, _, end) in fold.streams.items())


UNDELIVERED = """
SELECT count(*) FROM message_store.messages m
WHERE category(m.stream_name) = ANY (%(categories)s)
  AND NOT EXISTS (SELECT FROM fault_deliveries d
                  WHERE d.stream = m.stream_name AND d.position = m.position)
"""


def deliveries_caught_up(server: Server) -> bool:
    return bool(server.query(UNDELIVERED, {"categories": list(CATEGORIES)})[0][0] == 0)


def behind(
    server: Server,
    fold: Fold,
    *,
    size: int,
    tables: tuple[str, ...] = ("fault_totals",),
    limit: int = 5,
) -> list[str]:
    """What is left unhandled, for the failure message: streams whose totals (in each of
    ``tables``) stop short of their last event, and events never delivered; with the member of
    ``size`` owning each."""
    found = []
    for table in tables:
        last = dict(server.query(f"SELECT stream, last_position FROM {table}"))
        found += [
            f"{table}: {name} (member {consumer_group_member(name, size)}) applied up to "
            f"{last.get(name)} of {end}"
            for name, (_, _, end) in sorted(fold.streams.items())
            if last.get(name) != end
        ][:limit]
    rows = server.query(
        UNDELIVERED.replace(
            "SELECT count(*)", "SELECT m.stream_name, m.position, m.global_position"
        )
        + f" ORDER BY m.global_position LIMIT {limit}",
        {"categories": list(CATEGORIES)},
    )
    found += [
        f"deliveries: {name} position {position} (global {global_position}, member "
        f"{consumer_group_member(name, size)}) never delivered"
        for name, position, global_position in rows
    ]
    return found


def totals_mismatches(server: Server, fold: Fold, table: str = "fault_totals") -> list[str]:
    """Streams whose totals (in ``table``) differ from the fold, or that were applied with a
    gap."""
    rows = server.query(f"SELECT stream, total, applied, last_position, gaps FROM {table}")
    projected = {name: (int(t), int(a), int(last), int(g)) for name, t, a, last, g in rows}
    wrong = []
    for name, (total, count, last) in fold.streams.items():
        found = projected.get(name)
        if found != (total, count, last, 0):
            wrong.append(f"{table} {name}: projected {found}, folded {(total, count, last, 0)}")
    return wrong


def delivery_disorders(server: Server) -> list[str]:
    """Events a process was given before every earlier event of their stream had been given to
    some process: within one process a stream goes forward one position at a time, or back (a
    redelivery), and jumps ahead only over events that others were given already (another
    runner held the member meanwhile)."""
    rows = server.query("SELECT pid, stream, position FROM fault_deliveries ORDER BY seq")
    highest: dict[tuple[int, str], int] = {}
    given: set[tuple[str, int]] = set()
    disorders = []
    for pid, stream, position in rows:
        seen = highest.get((pid, stream), -1)
        skipped = [p for p in range(seen + 1, position) if (stream, p) not in given]
        if skipped:
            disorders.append(f"{stream} in pid {pid}: {position} before {skipped}")
        highest[(pid, stream)] = max(seen, position)
        given.add((stream, position))
    return disorders


def redeliveries(server: Server) -> int:
    rows = server.query(
        "SELECT count(*) - count(DISTINCT (stream, position)) FROM fault_deliveries"
    )
    return int(rows[0][0])


def parked(server: Server) -> list[str]:
    """Every held stream, retrying or parked: none should be, where no handler fails."""
    rows = server.query(
        "SELECT group_name, stream_name, state, error FROM projector.held_streams"
    )
    return [f"{group} {stream} ({state}): {error}" for group, stream, state, error in rows]
