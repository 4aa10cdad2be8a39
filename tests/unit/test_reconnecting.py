"""Retrying through an outage: how often it is logged, and when it gives up."""

from __future__ import annotations

import logging

import anyio
import pytest

from projector.errors import DatabaseUnavailableError
from projector.model.failures import RetryPolicy
from projector.reconnecting import Reconnecting

QUICK = RetryPolicy(base=0.001, cap=0.001)


def test_an_outage_is_logged_once_then_every_few_seconds_not_at_every_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="projector")
    retries = Reconnecting("reading account", limit=60, policy=QUICK)

    async def outage() -> None:
        for _ in range(50):
            await retries.failed(DatabaseUnavailableError("connection refused"))
        retries.succeeded()

    anyio.run(outage)

    attempts = [r for r in caplog.records if getattr(r, "action", None) == "reconnecting"]
    assert len(attempts) == 50
    assert [r.levelno for r in attempts].count(logging.WARNING) == 1
    [back] = [r for r in caplog.records if getattr(r, "action", None) == "reconnected"]
    assert back.__dict__["attempts"] == 50


def test_an_outage_longer_than_the_limit_raises_naming_the_limit() -> None:
    retries = Reconnecting("reading account", limit=0.05, policy=QUICK)

    async def outage() -> None:
        while True:
            await retries.failed(DatabaseUnavailableError("connection refused"))
            await anyio.sleep(0.01)

    with pytest.raises(DatabaseUnavailableError, match=r"more than 0.05 s .*\(outage_limit\)"):
        anyio.run(outage)
