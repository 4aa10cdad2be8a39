"""A failing stream stops no other stream, at the head or in a catch-up, with real `projector
run` processes and default settings (FAULTS.md entry 5): it is held out of the read path
(recorded as retrying), every healthy event is handled and the checkpoint reaches the head
while it still fails, and a restarted runner takes its held stream over and replays it.

No test here measures a time: how fast the healthy streams go is the bench's business
(`python -m bench failing`)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import anyio
import psycopg

from projector import write_message
from tests.support.cli import BALANCES, ProjectorProcess
from tests.support.groups import category_head
from tests.support.projecting import checkpoint, write_events
from tests.support.waiting import logged, wait_until

BAD = "order-bad"
# Never parked within a test: with the default backoff the stream keeps retrying.
NEVER_PARKED = ("--retry-max-attempts", "1000")


def start(
    workdir: Path, name: str, url: str, *flags: str, failing: str | None = BAD
) -> ProjectorProcess:
    """A runner of group shop whose handler fails for the stream ``failing``, as a downstream
    service refusing one entity would."""
    return ProjectorProcess.start(
        workdir,
        name,
        *("run", BALANCES, "--group", "shop", "--category", "order", "--database-url", url),
        *("--summary-interval", "0", "--no-progress", *flags),
        env={"FAILING_STREAMS": failing or ""},
    )


def held(url: str) -> list[tuple[str, str, int]]:
    """The group's held streams: (stream, state, position of the first unhandled event)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT stream_name, state, position FROM projector.held_streams"
            " WHERE group_name = 'shop' ORDER BY stream_name"
        ).fetchall()
    return [(str(s), str(state), int(p)) for s, state, p in rows]


def written(url: str) -> dict[str, list[int]]:
    """Every stream's positions in the store, in order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT stream_name, position FROM message_store.messages ORDER BY global_position"
        ).fetchall()
    found: dict[str, list[int]] = defaultdict(list)
    for stream, position in rows:
        found[str(stream)].append(int(position))
    return found


def by_stream(process: ProjectorProcess) -> dict[str, list[int]]:
    found: dict[str, list[int]] = defaultdict(list)
    for stream, position, _ in process.handled():
        found[stream].append(position)
    return found


async def write_slowly(url: str, events: int, *, rate: float) -> None:
    """Append ``events`` events, one at a time at ``rate`` a second, round-robin over ten
    healthy streams, with the failing stream's own every fifth event (as users write)."""
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    async with conn:
        for index in range(events):
            stream = BAD if index % 5 == 4 else f"order-{index % 10}"
            await write_message(conn, stream, "Ordered", {"n": index})
            await anyio.sleep(1 / rate)


def test_at_the_head_every_healthy_event_is_handled_while_one_stream_keeps_failing(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(write_events, url, {"order-0": 1})
    runner = start(tmp_path, "runner", url, *NEVER_PARKED)
    processes.append(runner)
    logged(runner.stderr_path, "source_tail_reached")

    # About ten events a second over ten streams for six seconds, as FAULTS.md's run did: at
    # the head each read is a batch of an event or two, so the default read-ahead (3 batches)
    # filled within three reads while the failing stream's batch waited for its retries.
    anyio.run(lambda: write_slowly(url, 60, rate=10))
    expected = {name: positions for name, positions in written(url).items() if name != BAD}

    wait_until(
        lambda: by_stream(runner) == expected,
        within=60,
        what="every healthy event handled while order-bad keeps failing",
    )
    assert held(url) == [(BAD, "retrying", 0)]
    assert BAD not in by_stream(runner)
    assert "stream_retry_scheduled" in runner.stderr
    assert runner.popen.poll() is None, runner.stderr


def test_in_a_catch_up_the_checkpoint_passes_a_failing_stream_and_a_restart_replays_it(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    url = own_store_url
    anyio.run(write_events, url, {**{f"order-{i}": 40 for i in range(250)}, BAD: 40})
    head = anyio.run(category_head, url, "order")
    expected = written(url)

    runner = start(tmp_path, "runner", url, *NEVER_PARKED, "--checkpoint-interval", "0.2")
    processes.append(runner)

    def caught_up_past_it() -> bool:
        return anyio.run(checkpoint, url, "shop", "order") == head + 1

    wait_until(caught_up_past_it, within=120, what="the checkpoint at the head")
    assert by_stream(runner) == {name: p for name, p in expected.items() if name != BAD}
    assert held(url) == [(BAD, "retrying", 0)]
    assert runner.stop() == 0, runner.stderr

    # Fixed and restarted: the new runner finds the stream held, replays it from its first
    # event, in order, and lets it rejoin the flow (its row goes).
    restarted = start(tmp_path, "restarted", url, failing=None)
    processes.append(restarted)
    wait_until(
        lambda: by_stream(restarted).get(BAD) == expected[BAD],
        within=60,
        what="order-bad replayed by the restarted runner",
    )
    wait_until(lambda: held(url) == [], within=30, what="order-bad back in the live flow")
    assert "stream_rejoined" in restarted.stderr
    assert set(by_stream(restarted)) == {BAD}, "a restart re-handled what was checkpointed"
