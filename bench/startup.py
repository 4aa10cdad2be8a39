"""How fast `projector` starts: ``projector --help`` and a run's imports, against the
interpreter starting with nothing to import, in the same run (medians of ``repeat`` runs).

Every command a user types, and every runner a supervisor restarts, pays this first.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "projector --help": [sys.executable, "-m", "projector", "--help"],
    "projector run's imports": [
        sys.executable,
        "-c",
        "import projector.cli.running, projector.runner, projector.runtime.exactly_once",
    ],
}


def _seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def measure(repeat: int) -> dict[str, float]:
    """Median wall seconds per command, the commands taking turns."""
    runs: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(max(repeat, 1) * 3):
        for name, command in COMMANDS.items():
            runs[name].append(_seconds(command))
    return {name: statistics.median(times) for name, times in runs.items()}


def report(repeat: int) -> None:
    medians = measure(repeat)
    baseline = medians["python -c pass (baseline)"]
    print("startup (median wall time, ratio to the bare interpreter)")
    for name, seconds in medians.items():
        print(f"  {name:<28} {seconds * 1000:7.0f} ms  {seconds / baseline:5.1f}x")
    figures = {name: round(seconds, 4) for name, seconds in medians.items()}
    print(json.dumps({"scenario": "startup", "seconds": figures}), flush=True)
