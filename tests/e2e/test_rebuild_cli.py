"""A projection rebuilt with no downtime, by real `projector` processes, as an operator does it:
version 1 serves under writers while version 2 rebuilds beside it (its runner SIGKILLed once
mid-rebuild); a reader polls the stable name all through `rebuild start`, `cutover` and
`rollback`; after each switch the version serving equals a fold of the store. Then the
refusals, one line and the exit code the docs give, and `projector replay` of one stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import psycopg

from projector.admin import rebuild_status
from projector.storage.database import connect
from tests.support.balances import write_transactions
from tests.support.cli import BALANCES, ProjectorProcess, handled, run_projector
from tests.support.ledger import balances_in, folded
from tests.support.waiting import wait_until

V1 = "tests.support.versioned_projections:v1"
V2 = "tests.support.versioned_projections:v2"
ACCOUNTS = 30


@dataclass
class Reader:
    """Reads the stable name in a loop: every error, and every read that did not show all the
    accounts or (while ``exact`` is set) not the balances folded from the store."""

    url: str
    reads: int = 0
    errors: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    exact: dict[str, int] | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                expected = self.exact
                try:
                    rows = conn.execute("SELECT account, balance FROM balances.balances")
                    seen = {str(a): int(b) for a, b in rows}
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                    continue
                self.reads += 1
                if len(seen) != ACCOUNTS or (expected is not None and seen != expected):
                    self.partial.append(f"{len(seen)} accounts, total {sum(seen.values())}")
                time.sleep(0.01)


@contextmanager
def reading(url: str) -> Iterator[Reader]:
    reader = Reader(url)
    thread = threading.Thread(target=reader.run, name="reader")
    thread.start()
    try:
        yield reader
    finally:
        reader.stop.set()
        thread.join(timeout=30)


@contextmanager
def writing(url: str) -> Iterator[list[int]]:
    """Writers appending to the same accounts until the block ends; the transactions done."""
    done: list[int] = []
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            anyio.run(lambda: write_transactions(url, accounts=ACCOUNTS, events=10, seed=len(done)))
            done.append(1)
            time.sleep(0.02)

    thread = threading.Thread(target=write, name="writer")
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join(timeout=30)


def _projector(workdir: Path, url: str, *args: str) -> tuple[int, str, str]:
    result = run_projector(workdir, *args, "--database-url", url)
    return result.returncode, result.stdout, result.stderr


def _start(
    workdir: Path,
    url: str,
    target: str,
    name: str,
    processes: list[ProjectorProcess],
    delay: float,
    *args: str,
) -> ProjectorProcess:
    process = ProjectorProcess.start(
        workdir,
        name,
        *("run", target, "--checkpoint-interval", "0.2", "--batch-size", "50", *args),
        env={"PROJECTOR_DATABASE_URL": url, "HANDLER_DELAY": str(delay)},
    )
    processes.append(process)
    return process


def _applied(url: str, group: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(position + 1), 0) FROM projector.stream_positions"
            " WHERE group_name = %s",
            (group,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _lag(url: str, version: int) -> int | None:
    """The version's lag, as `projector rebuild status` reports it (read in-process here: a
    command per look would cost a second of start-up each)."""

    async def collect() -> int | None:
        conn = await connect(url)
        async with conn:
            rows = await rebuild_status.collect(conn, "balances")
        return next(row.lag_events for row in rows if row.version.version == version)

    return anyio.run(collect)


def test_a_rebuild_cuts_over_and_back_with_no_reader_ever_failing(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(lambda: write_transactions(url, accounts=ACCOUNTS, events=600, seed=1))
    v1 = _start(tmp_path, url, V1, "v1", processes, delay=0)
    wait_until(lambda: _schema_ready(url), within=60, what="version 1 set up and live")
    wait_until(lambda: balances_in(url, "balances") == folded(url), within=60, what="v1 caught up")

    with reading(url) as reader:
        with writing(url) as written:
            code, out, err = _projector(tmp_path, url, "rebuild", "start", V2)
            assert code == 0, err
            assert "version 2 of balances: building, group balances_v2, schema balances_v2" in out
            v2 = _start(tmp_path, url, V2, "v2", processes, delay=0.05)
            wait_until(lambda: _applied(url, "balances_v2") > 200, within=60, what="v2 applies")
            assert v2.kill() == -9  # mid-rebuild
            assert _applied(url, "balances_v2") < 600
            v2 = _start(tmp_path, url, V2, "v2-again", processes, delay=0)
            wait_until(lambda: len(written) >= 5, within=60, what="writes during the rebuild")
        # The writers stopped: every read from now on must show the fold, whichever version.
        wait_until(lambda: _lag(url, 2) == 0, within=60, what="v2 caught up")
        wait_until(lambda: balances_in(url, "balances") == folded(url), within=60, what="v1")
        reader.exact = folded(url)

        code, out, err = _projector(
            tmp_path,
            url,
            *("rebuild", "cutover", "--projection", "balances", "--max-lag", "0"),
            *("--timeout", "30", "--query", "SELECT account, balance FROM balances"),
        )
        assert code == 0, err
        assert "version 2 of balances is live" in out
        assert balances_in(url, "balances_v2") == folded(url)
        assert _columns(url) == ["account", "balance", "events"]

        code, out, err = _projector(
            tmp_path, url, "rebuild", "rollback", "--projection", "balances"
        )
        assert code == 0, err
        assert "version 1 of balances is live again" in out
        assert _columns(url) == ["account", "balance"]
        assert balances_in(url, "balances") == folded(url)
        time.sleep(0.5)

    assert reader.errors == []
    assert reader.partial == []
    assert reader.reads > 50
    assert v1.running()
    assert v2.running()


def _schema_ready(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass('balances.balances') IS NOT NULL").fetchone()
    return row is not None and bool(row[0])


def _columns(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'balances' AND table_name = 'balances' ORDER BY ordinal_position"
        ).fetchall()
    return [str(row[0]) for row in rows]


def test_bad_input_is_one_line_and_the_exit_code_the_docs_give(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(lambda: write_transactions(url, accounts=40, events=200, seed=2))
    run = run_projector(tmp_path, "run", V1, "--until-caught-up", "--database-url", url)
    assert run.returncode == 0, run.stderr

    balances = ("--projection", "balances")
    refusals = [
        (("run", V2, "--until-caught-up"), 2, "is not recorded: start it with `projector rebuild"),
        (("rebuild", "rollback", *balances), 1, "no previous version"),
        (("rebuild", "retire", *balances, "--version", "1", "--yes"), 1, "is live"),
        (("rebuild", "cutover", *balances, "--version", "9"), 2, "no version 9"),
        (("rebuild", "verify", "--projection", "nothing"), 2, "no recorded versions"),
    ]
    for args, code, text in refusals:
        result = run_projector(tmp_path, *args, "--database-url", url)
        assert (result.returncode, result.stderr.count("\n")) == (code, 1), result.stderr
        assert text in result.stderr

    code, _, err = _projector(tmp_path, url, "rebuild", "start", V2)
    assert code == 0, err
    # Version 2 runs slowly beside version 1 (a call at a time): a cutover that does not wait
    # for it is refused.
    _start(tmp_path, url, V2, "v2", processes, 0.2, "--max-concurrent-streams", "1")
    wait_until(lambda: _applied(url, "balances_v2") > 0, within=60, what="v2 applies")
    code, _, err = _projector(
        tmp_path, url, "rebuild", "cutover", "--projection", "balances", "--max-lag", "0",
        "--timeout", "0.5",
    )
    assert (code, err.count("\n")) == (1, 1), err
    assert "version 2 of balances is not ready after 0.5 s: it lags" in err


def test_replay_of_one_stream_is_exact_for_a_transactional_projection(
    tmp_path: Path, own_store_url: str
) -> None:
    url = own_store_url
    anyio.run(lambda: write_transactions(url, accounts=5, events=100, seed=3))
    run = run_projector(tmp_path, "run", V1, "--until-caught-up", "--database-url", url)
    assert run.returncode == 0, run.stderr
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE balances_v1.balances SET balance = balance + 1000")

    code, out, err = _projector(tmp_path, url, "replay", V1, "account-3")
    assert code == 0, err
    assert "balances: account-3 replayed" in out
    fixed = balances_in(url, "balances")
    expected = folded(url)
    assert fixed["account-3"] == expected["account-3"]
    assert fixed["account-1"] == expected["account-1"] + 1000  # the others untouched


def test_replay_of_one_stream_is_delivered_again_in_order_by_an_at_least_once_runner(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(lambda: write_transactions(url, accounts=3, events=60, seed=4))
    runner = ProjectorProcess.start(
        tmp_path, "runner", "run", BALANCES, "--category", "account",
        env={"PROJECTOR_DATABASE_URL": url},
    )
    processes.append(runner)
    wait_until(lambda: len(runner.handled()) == 60, within=60, what="the first delivery")
    first = [p for s, p, _ in runner.handled() if s == "account-1"]

    code, out, err = _projector(tmp_path, url, "replay", BALANCES, "account-1")
    assert code == 0, err
    assert "the running projector delivers them within seconds" in out
    wait_until(
        lambda: len(runner.handled()) == 60 + len(first), within=60, what="the replay"
    )
    again = [p for s, p, _ in handled(runner.handled_path) if s == "account-1"]
    assert again == first + sorted(first)
    assert first == sorted(first)
