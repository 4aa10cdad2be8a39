"""Elastic groups with real processes while writers append: scaling 1 to 4 to 2 to 3 members,
a SIGKILL, a SIGSTOP past the lease, a rolling restart, server restarts and terminated sessions.

Every runner is a `projector run --elastic` process projecting ``calls`` (see `projections`),
which records each call: its stream, every position it was given, its process and when it ran
(a call lasts a real wait, so two processes in one stream at once show as intersecting
windows). The checks are against ``message_store.messages`` itself: no event is missed, no
stream is handled by two processes at once (but by a zombie beside its successor, which the
README allows), a call is given its stream's events one after another and never skips ahead
of what was handled, and a graceful change (a member joining, or leaving with SIGTERM)
delivers nothing twice.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from projector.localpg import temporary_cluster
from tests.faults.harness import (
    BUCKET_LEASE,
    CATEGORIES,
    SETTLE,
    Elastic,
    Fold,
    Server,
    Writers,
    connect,
    terminate_sessions,
    totals_caught_up,
    totals_mismatches,
)
from tests.faults.projections import CALLS_TABLE
from tests.support import messagedb
from tests.support.postgres import NoTestServerError, give_up, require_server_binaries
from tests.support.waiting import wait_until

WRITE_RATE = 40.0  # events per second per writer
# Few streams, so that a stream's events pile up while it is busy or its bucket moves, and a
# call is given several of them: what the checks look inside.
STREAMS = 10  # per category


@pytest.fixture(scope="module")
def shared_server(pytestconfig: pytest.Config) -> Iterator[Server]:
    """One server for the module (installing Message DB takes seconds): each test empties the
    store and the calls table first, and runs a group of its own."""
    try:
        require_server_binaries()
        scripts = messagedb.database_scripts(pytestconfig.rootpath / ".cache" / "message-db")
    except NoTestServerError as exc:
        give_up(str(exc))
    with temporary_cluster() as cluster:
        server = Server.install(cluster, scripts)
        with connect(server.url) as conn:
            conn.execute(CALLS_TABLE.encode())
        yield server


@pytest.fixture
def server(shared_server: Server) -> Server:
    with connect(shared_server.url) as conn:
        conn.execute("TRUNCATE fault_calls, fault_totals, message_store.messages")
    return shared_server


@contextmanager
def appending(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest, *, seed: int | None = None
) -> Iterator[tuple[Writers, Elastic]]:
    """Two writers appending from the start, and the test's own elastic group (named after
    it); on the way out, whatever happened, the writers and the group's processes stop."""
    writers = Writers(server, tmp_path)
    group = Elastic(request.node.name.removeprefix("test_")[:40], server, tmp_path)
    try:
        seed = random.randrange(10**6) if seed is None else seed
        writers.start(2, rate=WRITE_RATE, seed=seed, streams=STREAMS)
        yield writers, group
    finally:
        writers.stop()
        group.stop()


@dataclass(frozen=True)
class Call:
    stream: str
    positions: list[int]
    pid: int
    started: float
    ended: float


def calls(server: Server) -> list[Call]:
    rows = server.query(
        "SELECT stream, positions, pid, started, ended FROM fault_calls ORDER BY seq"
    )
    return [Call(*row) for row in rows]


def written(server: Server) -> set[tuple[str, int]]:
    """Every event of the suite's categories, as (stream, position), from
    message_store.messages."""
    rows = server.query(
        "SELECT stream_name, position FROM message_store.messages"
        " WHERE category(stream_name) = ANY (%(categories)s)",
        {"categories": list(CATEGORIES)},
    )
    return {(str(name), int(position)) for name, position in rows}


def missed(server: Server, found: list[Call]) -> list[str]:
    """Events of the store no call that returned was given."""
    delivered = {event for call in found for event in _events(call)}
    return [f"{stream}@{position}" for stream, position in sorted(written(server) - delivered)]


def overlaps(found: list[Call], *, zombies: frozenset[int] = frozenset()) -> list[str]:
    """Calls of one stream by two processes whose running times intersect; calls of
    ``zombies`` (processes silent past their lease, which may deliver beside their successor
    until they notice: README, "What holds under faults (elastic)") are left out."""
    by_stream: dict[str, list[Call]] = defaultdict(list)
    for call in found:
        if call.pid not in zombies:
            by_stream[call.stream].append(call)
    wrong: list[str] = []
    for stream, stream_calls in by_stream.items():
        busy_until: dict[int, float] = {}  # per process, when its latest call ended
        for call in sorted(stream_calls, key=lambda c: c.started):
            wrong.extend(
                f"{stream}: pid {pid} and {call.pid} at once"
                for pid, until in busy_until.items()
                if pid != call.pid and until > call.started
            )
            busy_until[call.pid] = max(busy_until.get(call.pid, 0.0), call.ended)
    return wrong


def skips(found: list[Call]) -> list[str]:
    """Calls given a stream's events out of order: not one after another, or beginning past
    the next event of their stream that no call had been given yet."""
    highest: dict[str, int] = {}
    wrong = []
    for call in sorted(found, key=lambda c: c.started):
        seen = highest.get(call.stream, -1)
        first = call.positions[0]
        if call.positions != list(range(first, first + len(call.positions))):
            wrong.append(f"{call.stream}: pid {call.pid} was given {call.positions}")
        elif first > seen + 1:
            wrong.append(f"{call.stream}: pid {call.pid} began at {first} after {seen}")
        highest[call.stream] = max(seen, call.positions[-1])
    return wrong


def redelivered(found: list[Call]) -> list[str]:
    """Positions given more than once, with the calls that were given them."""
    given: dict[tuple[str, int], list[Call]] = defaultdict(list)
    for call in found:
        for event in _events(call):
            given[event].append(call)
    return [
        f"{stream}@{position}: " + ", ".join(f"pid {c.pid} at {c.started:.3f}" for c in twice)
        for (stream, position), twice in sorted(given.items())
        if len(twice) > 1
    ]


def _events(call: Call) -> list[tuple[str, int]]:
    return [(call.stream, position) for position in call.positions]


def caught_up(server: Server) -> None:
    try:
        wait_until(lambda: missed(server, calls(server)) == [], within=SETTLE, poll=0.5)
    except AssertionError:
        left = missed(server, calls(server))
        raise AssertionError(
            f"not handled {SETTLE:g} s after the writers stopped: {left[:10]}"
        ) from None


def check(
    server: Server, group: Elastic, *, graceful: bool, zombies: frozenset[int] = frozenset()
) -> None:
    found = calls(server)
    assert [p.describe() for p in group.unasked_exits()] == []
    assert missed(server, found) == []
    assert overlaps(found, zombies=zombies) == []
    assert skips(found) == []
    if graceful:
        assert redelivered(found) == []


def test_scaling_1_4_2_3_while_writers_append_misses_nothing_and_repeats_nothing(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with appending(server, tmp_path, request) as (writers, group):
        group.wait_settled([group.spawn()])
        for _ in range(3):
            group.spawn()
        group.wait_settled(group.live())
        for process in group.live()[:2]:
            process.stop()  # SIGTERM: a graceful leave
        group.wait_settled(group.live())
        group.spawn()
        group.wait_settled(group.live())
        writers.stop()
        caught_up(server)
    check(server, group, graceful=True)


def test_a_killed_members_buckets_move_once_its_lease_expires(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with appending(server, tmp_path, request) as (writers, group):
        survivor, victim = group.spawn(), group.spawn()
        group.wait_settled([survivor, victim])
        victim.kill()
        killed_at = time.monotonic()
        group.wait_settled([survivor])
        assert time.monotonic() - killed_at >= BUCKET_LEASE * 0.9, "taken before the lease expired"
        writers.stop()
        caught_up(server)
    check(server, group, graceful=False)


def test_a_member_paused_past_its_lease_commits_nothing_when_it_resumes(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with appending(server, tmp_path, request) as (writers, group):
        successor, zombie = group.spawn(), group.spawn()
        group.wait_settled([successor, zombie])
        zombie.pause()
        group.wait_settled([successor])
        writers.stop()
        caught_up(server)
        successor.stop()  # commits past everything, and frees the buckets
        before = _checkpoints(server, group.name)
        resumed_at = len(zombie.log.read_text().splitlines())
        zombie.resume()
        # The zombie's tenure ends (whatever it would still commit is fenced), and then a new
        # one takes every free bucket: nothing of the old tenure runs after that.
        wait_until(
            lambda: _tenure_end(_actions(zombie.log, since=resumed_at)) is not None,
            within=SETTLE,
            what="the zombie's tenure to end",
        )
        group.wait_settled([zombie])
        after = _checkpoints(server, group.name)
    assert after == before, "the zombie moved checkpoints back"
    actions = _actions(zombie.log, since=resumed_at)
    assert "checkpoint_committed" not in actions[: _tenure_end(actions)]
    check(server, group, graceful=False, zombies=frozenset({zombie.pid}))


def test_a_rolling_restart_of_every_member_repeats_nothing(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with appending(server, tmp_path, request) as (writers, group):
        for _ in range(3):
            group.spawn()
        group.wait_settled(group.live())
        for process in list(group.live()):
            process.stop()
            group.spawn()
            group.wait_settled(group.live())
        writers.stop()
        caught_up(server)
    check(server, group, graceful=True)


def test_server_restarts_and_terminated_sessions_miss_nothing_and_run_nothing_twice_at_once(
    server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The faults a member's database sessions meet: its connections cut by
    ``pg_terminate_backend``, and the server restarted (``fast`` and ``immediate``), for up to
    the bucket lease, so that leases expire and buckets move. Events may be delivered again
    (at least once), but none is missed or handled by two processes at once; a transactional
    group beside it applies each event exactly once (its totals equal the fold of the store)."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    totals = Elastic("elastic_totals", server, tmp_path, "tests.faults.projections:totals")
    with appending(server, tmp_path, request, seed=seed) as (writers, group), totals:
        for _ in range(3):
            group.spawn()
            totals.spawn()
        group.wait_settled(group.live())
        totals.wait_settled(totals.live())
        for fault in ("terminate", "fast", "terminate", "immediate", "terminate", "fast"):
            if fault == "terminate":
                terminate_sessions(server, rng)
            else:
                server.restart(fault, down_for=rng.uniform(0, BUCKET_LEASE))
            time.sleep(rng.uniform(0.5, 1.5))
        group.wait_settled(group.live())
        writers.stop()
        caught_up(server)
        fold = Fold.of(server)
        wait_until(lambda: totals_caught_up(server, fold), within=SETTLE, poll=0.5)
    exits = [p.describe() for p in [*group.unasked_exits(), *totals.unasked_exits()]]
    assert exits == [], f"seed {seed}"
    assert totals_mismatches(server, fold) == [], f"seed {seed}"
    check(server, group, graceful=False)


def _checkpoints(server: Server, group: str) -> dict[tuple[int, str], int]:
    rows = server.query(
        "SELECT member, category, position FROM projector.checkpoints WHERE group_name = %(g)s",
        {"g": group},
    )
    return {(int(member), str(category)): int(position) for member, category, position in rows}


def _tenure_end(actions: list[str]) -> int | None:
    """Where in ``actions`` a zombie's tenure ended: its lost buckets, or a fenced commit."""
    return min(
        (actions.index(a) for a in ("buckets_lost", "checkpoint_fenced") if a in actions),
        default=None,
    )


def _actions(log: Path, *, since: int) -> list[str]:
    actions = []
    text = log.read_text(errors="replace")
    # The process may be writing as we read: a line without its newline is not done yet.
    for line in text.splitlines()[since : text.count("\n")]:
        if line.startswith("{"):
            actions.append(str(json.loads(line).get("action", "")))
    return actions
