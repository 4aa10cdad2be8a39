"""Waiting, in tests, for what no event announces (rows in the database, a line in a log, a
process's progress): one polling helper for async tests and one for plain ones."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

POLL = 0.02  # seconds between looks


async def eventually(
    condition: Callable[[], Awaitable[bool] | bool], *, within: float = 30, poll: float = POLL
) -> None:
    """Wait until ``condition()`` (plain or async) holds; fail the test after ``within`` s."""
    with anyio.fail_after(within):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await anyio.sleep(poll)


def wait_until(
    condition: Callable[[], bool], *, within: float = 30, what: str = "", poll: float = POLL
) -> float:
    """Block until ``condition()`` holds; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within:g} s: {what or condition}")
        time.sleep(poll)
    return time.monotonic() - start


def logged(log: Path, text: str, *, within: float = 30) -> None:
    """Block until ``text`` is in the file ``log`` (a process's output)."""
    wait_until(
        lambda: log.exists() and text in log.read_text(errors="replace"),
        within=within,
        what=f"{text!r} in {log}",
    )
