"""Transactional batch projections under SIGKILL, with real `projector run` processes: whether
projector records the streams' positions (`projector.stream_positions`) or the read model's
own rows hold them (``positions="read_model"`` with `GuardedUpsert`), every event is applied
exactly once; the read models equal an independent fold of the store.

The read-model form is killed between its writes and its checkpoint on purpose: the runner
commits no checkpoint (an hour's interval) until it is killed with everything applied, so the
restart is given every event again and must change nothing."""

from __future__ import annotations

import random
import textwrap
import time
from functools import partial
from pathlib import Path

import anyio
import psycopg
import pytest

from projector.model.events import FIRST_POSITION
from tests.support.balances import write_transactions
from tests.support.cli import ProjectorProcess
from tests.support.projecting import checkpoint
from tests.support.waiting import wait_until

HANDLERS = """
import anyio
from projector import Column, Event, GuardedUpsert, Projection

def amount(event: Event) -> int:
    value = int(event.data["amount"])
    return -value if event.type == "Withdrawn" else value

ADD = '''
INSERT INTO batch_balances AS b (account, balance, events)
SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])
ON CONFLICT (account) DO UPDATE
SET balance = b.balance + EXCLUDED.balance, events = b.events + EXCLUDED.events
'''

# Not idempotent on its own (it adds): projector's recorded positions make it exactly once.
recorded = Projection("recorded")

@recorded.transactional_batch
async def add_all(spans: dict[str, list[Event]], conn) -> None:
    await anyio.sleep(0.005)  # slow enough that the kills land between calls and commits
    names = list(spans)
    await conn.execute(
        ADD,
        (names, [sum(map(amount, spans[n])) for n in names], [len(spans[n]) for n in names]),
    )

# The read model's rows hold the positions; the upsert is guarded by them.
guarded = Projection("guarded")
upsert = GuardedUpsert(
    "guarded_balances",
    stream_column="account",
    add={"balance": Column("bigint", amount), "events": Column("bigint", lambda e: 1)},
    latest={"last_type": Column("text", lambda e: e.type)},
)

@guarded.transactional_batch(positions="read_model")
async def upsert_all(spans: dict[str, list[Event]], conn) -> None:
    await upsert.execute(conn, spans)
"""

TABLES = """
CREATE TABLE batch_balances (account text PRIMARY KEY, balance bigint NOT NULL,
                             events bigint NOT NULL);
CREATE TABLE guarded_balances (account text PRIMARY KEY, position bigint NOT NULL,
                               balance bigint NOT NULL, events bigint NOT NULL,
                               last_type text NOT NULL);
"""

FOLD = """
SELECT stream_name,
       sum(CASE WHEN type = 'Withdrawn' THEN -1 ELSE 1 END * (data->>'amount')::bigint),
       count(*), max(position),
       (array_agg(type ORDER BY position DESC))[1]
FROM message_store.messages
WHERE message_store.category(stream_name) = 'account'
GROUP BY stream_name
"""


@pytest.fixture
def workdir(tmp_path: Path, own_store_url: str) -> Path:
    """A folder with this file's projections, and a database with their events and tables."""
    (tmp_path / "batch_projections.py").write_text(textwrap.dedent(HANDLERS))
    anyio.run(lambda: write_transactions(own_store_url, accounts=60, events=3000, seed=7))
    with psycopg.connect(own_store_url, autocommit=True) as conn:
        conn.execute(TABLES)
    return tmp_path


def start(
    workdir: Path, processes: list[ProjectorProcess], url: str, target: str, *args: str
) -> ProjectorProcess:
    process = ProjectorProcess.start(
        workdir,
        f"{target}{len(processes)}",
        *("run", f"batch_projections:{target}", "-c", "account", "--batch-size", "50", *args),
        env={"PROJECTOR_DATABASE_URL": url},
    )
    processes.append(process)
    return process


def fold(url: str) -> dict[str, tuple[int, int, int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(FOLD).fetchall()
    return {str(s): (int(b), int(n), int(p), str(t)) for s, b, n, p, t in rows}


def applied(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT coalesce(sum(events), 0) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def applied_at_least(url: str, table: str, count: int) -> bool:
    return applied(url, table) >= count


def test_a_transactional_batch_killed_again_and_again_applies_each_event_once(
    workdir: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url, rng = own_store_url, random.Random(7)
    for kill in range(1, 5):
        process = start(workdir, processes, url, "recorded", "--checkpoint-interval", "0.2")
        # Each kill lands after more work was done, never before any.
        wait_until(partial(applied_at_least, url, "batch_balances", kill * 400), within=60)
        time.sleep(rng.uniform(0.0, 0.3))  # and anywhere between its calls and commits
        process.kill()
    finish = start(workdir, processes, url, "recorded", "--until-caught-up")
    assert finish.wait(timeout=120) == 0, finish.stderr

    with psycopg.connect(url) as conn:
        projected = {
            str(a): (int(b), int(n))
            for a, b, n in conn.execute("SELECT * FROM batch_balances").fetchall()
        }
    assert projected == {stream: (b, n) for stream, (b, n, _, _) in fold(url).items()}


def test_a_read_model_holding_its_positions_killed_before_its_checkpoint_applies_each_once(
    workdir: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    process = start(workdir, processes, url, "guarded", "--checkpoint-interval", "3600")
    wait_until(lambda: applied(url, "guarded_balances") == 3000, within=60)
    process.kill()
    first = anyio.run(checkpoint, url, "guarded", "account")
    assert first == FIRST_POSITION, "the checkpoint moved: a restart is not given it all again"

    finish = start(workdir, processes, url, "guarded", "--until-caught-up")
    assert finish.wait(timeout=120) == 0, finish.stderr

    with psycopg.connect(url) as conn:
        projected = {
            str(a): (int(b), int(n), int(p), str(t))
            for a, p, b, n, t in conn.execute("SELECT * FROM guarded_balances").fetchall()
        }
        recorded = conn.execute(
            "SELECT count(*) FROM projector.stream_positions WHERE group_name = 'guarded'"
        ).fetchone()
    assert projected == fold(url)
    assert recorded == (0,)
