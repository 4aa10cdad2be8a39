"""Profiles of projector's runs: py-spy's raw (collapsed-stack) output, and a short summary of
where the samples fell, by function (self time: the sampled frame; inclusive: anywhere on the
stack), leaving out the child's imports. Feed the raw file to flamegraph.pl or speedscope for the
full picture."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

PY_SPY_RATE = 250  # samples a second


def py_spy_prefix(output: Path) -> list[str]:
    """The command that runs a child under ``py-spy record``, writing raw stacks to ``output``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).is_file():
        raise SystemExit("bench: --profile needs py-spy: pip install py-spy (into the venv)")
    rate = str(PY_SPY_RATE)
    return [py_spy, "record", "--rate", rate, "--format", "raw", "--output", str(output), "--"]


def summarize(raw: Path, *, top: int = 25) -> str:
    """The ``top`` functions by self and by inclusive samples, as percentages of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        if "_find_and_load" in stack:
            continue  # importing modules, before the clock starts
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{raw.name}: {total} samples (imports left out)", "  self:"]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``fn (path/to/site-packages/pkg/mod.py:12)`` -> ``fn (pkg/mod.py)``: lines merged."""
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(.*/(?:site-packages|src|lib/python3\.\d+)/", "(", frame)
