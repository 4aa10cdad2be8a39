"""Shielded cleanups: they run to the end through a cancellation, within their time limit, and
say so when the limit cut them short."""

from __future__ import annotations

import logging

import anyio
import pytest

from projector import cleanup

pytestmark = pytest.mark.anyio


async def test_a_cleanup_finishes_although_its_caller_is_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finished = False
    with anyio.CancelScope() as outer:
        outer.cancel()
        with cleanup.shielded("the final checkpoint commit", 5.0):
            await anyio.sleep(0.01)
            finished = True
    assert finished
    assert not [r for r in caplog.records if getattr(r, "action", None) == "cleanup_timed_out"]


async def test_a_cleanup_past_its_limit_is_abandoned_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="projector")
    with cleanup.shielded("releasing g-0", 0.01):
        await anyio.sleep(10)
    (record,) = [r for r in caplog.records if getattr(r, "action", None) == "cleanup_timed_out"]
    assert record.cleanup == "releasing g-0"  # type: ignore[attr-defined]
    assert record.timeout == 0.01  # type: ignore[attr-defined]
    assert "releasing g-0 did not finish within 0.01s" in record.getMessage()
