"""``python -m bench failing``: one stream whose handler raises on every call, and the others
(issue 19, FAULTS.md entry 5). Each scenario runs projector with the failing stream against the
same run with that stream healthy, in the same run, with default retry settings: the stream
keeps retrying, never parked within a run. The child side is `bench.failing_jobs`.

- **failing-catchup**: the main catch-up dataset, whose stream ``<category>-0`` has events from
  the first one on (round-robin seeding): the healthy streams' events/s against the same
  catch-up with no failing stream (target 0.9x).
- **failing-tail**: a steady writer over 100 streams, one of them failing: the healthy events'
  latencies from commit to handler call, and how many of those written in the window were
  handled, against the same tail with no failing stream.
- **failing-held-memory**: two streams of ``held_events`` events each, round-robin, one of them
  failing from its first event, so that all its events are dropped as read: the peak RSS
  against the same run with no failing stream, which must not grow by more than
  ``MEMORY_GROWTH_MB``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.jobs import Job
from bench.scenarios import MEMORY_GROWTH_MB, Outcome, Scenario, Sizes, datasets
from bench.seed import Dataset

MEMORY = "failing-held-memory"
NO_FAILING_STREAM = "the same, no failing stream"


def scenarios(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> list[Scenario]:
    data = datasets(sizes)
    main, held = data["main"], data["held"]

    def catchup(name: str, dataset: Dataset, *, fails: bool) -> Job:
        return Job(
            "failing_catchup",
            url=url,
            category=dataset.category,
            group=f"bench_{run_id}_{name.replace('-', '_')}",
            batch_size=sizes.batch_size,
            settings=settings,
            failing_stream=f"{dataset.category}-0",
            fails=fails,
        )

    return [
        Scenario(
            "failing-catchup",
            f"catch-up, no-op handler raising on every call of {main.category}-0 (default "
            f"retries: never parked within the run), {main.events:,} events over "
            f"{main.streams:,} streams; the healthy streams' events/s",
            catchup("failing-catchup", main, fails=True),
            catchup("failing-catchup-healthy", main, fails=False),
            NO_FAILING_STREAM,
            target=0.9,
            dataset=main,
        ),
        _tail(url, run_id, sizes, settings),
        Scenario(
            MEMORY,
            f"catch-up, {held.category}-0 failing from its first event (its "
            f"{held.events // 2:,} events dropped as read) beside one healthy stream of as many; "
            "peak RSS",
            catchup("failing-held", held, fails=True),
            catchup("failing-held-healthy", held, fails=False),
            NO_FAILING_STREAM,
            dataset=held,
        ),
    ]


def _tail(url: str, run_id: str, sizes: Sizes, settings: dict[str, Any]) -> Scenario:
    """The healthy streams' latencies at the head, default settings (``max_read_ahead`` 3,
    polling every ``tail_sleep`` 0.1 s), each side on a category of its own."""

    def tail(name: str, *, fails: bool) -> Job:
        category = f"bench_{run_id}_{name}"
        return Job(
            "failing_tail",
            url=url,
            category=category,
            group=category,
            handler="tail",
            warmup=sizes.tail_warmup,
            seconds=sizes.tail_seconds,
            batch_size=sizes.batch_size,
            settings=settings,
            failing_stream=f"{category}-0",
            fails=fails,
        )

    return Scenario(
        "failing-tail",
        f"tail latency of the healthy streams, commit to handler call, one writer at "
        f"{sizes.tail_rate:g} events/s over 100 streams, one of which fails on every call; "
        "default settings",
        tail("tail_failing", fails=True),
        tail("tail_healthy", fails=False),
        NO_FAILING_STREAM,
    )


def compare_memory(outcomes: Sequence[Outcome]) -> None:
    """A held stream's events are dropped as they are read: the peak RSS of a run holding one
    must not grow past the same run's with no failing stream."""
    for outcome in outcomes:
        if outcome.scenario.name != MEMORY or outcome.baseline is None:
            continue
        growth = outcome.projector["peak_rss_mb"] - outcome.baseline["peak_rss_mb"]
        outcome.projector["peak_rss_growth_mb"] = round(growth, 1)
        dataset = outcome.scenario.dataset
        if dataset is not None and growth > MEMORY_GROWTH_MB:
            outcome.notes.append(
                f"peak RSS grew by {growth:.0f} MB with a stream held for "
                f"{dataset.events // 2:,} of its events"
            )
