"""Entry point of a measuring child process: ``python -m bench.child '<job as JSON>'``.

Prints the job's figures as one JSON line on stdout (and nothing else there), with the peak RSS
of this process (``VmHWM``, read at the end: its own, since each measurement is a fresh process).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from bench import failing_jobs, jobs
from bench.jobs import Job

KINDS: dict[str, Callable[[Job], dict[str, Any]]] = {**jobs.JOBS, **failing_jobs.JOBS}


def main() -> None:
    job = Job(**json.loads(sys.argv[1]))
    print(json.dumps(run(job)), flush=True)


def run(job: Job) -> dict[str, Any]:
    """Run ``job``; its figures as a dict (events, seconds, peak and starting RSS in MB)."""
    rss_start = _status_mb("VmRSS")
    result = KINDS[job.kind](job)
    result["peak_rss_mb"] = _status_mb("VmHWM")
    result["start_rss_mb"] = rss_start
    return result


def _status_mb(name: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB.

    ``VmHWM`` is the peak RSS of this program only: ``getrusage``'s ``ru_maxrss`` would carry
    over the parent's peak through fork and exec.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {name} in /proc/self/status")


if __name__ == "__main__":
    main()
