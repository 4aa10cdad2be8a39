"""A runner's HTTP endpoint as tests read it: its paths, its JSON probes and its metrics."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from projector.settings import Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def answers(settings: Settings) -> bool:
    """Whether the runner's endpoint answers at all yet."""
    try:
        await get(settings, "/health")
    except aiohttp.ClientConnectionError:
        return False
    return True


async def get(settings: Settings, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{settings.metrics_port}{path}"
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, await response.text()


async def probe(settings: Settings, path: str) -> tuple[int, dict[str, Any]]:
    status, text = await get(settings, path)
    body: dict[str, Any] = json.loads(text)
    return status, body


async def scrape(settings: Settings) -> Samples:
    status, text = await get(settings, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
