"""`projector run --metrics-port` as a user runs it: probes and scrapes over HTTP, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from projector.localpg import free_port
from tests.support.projecting import write_events

PROJECTOR = [sys.executable, "-m", "projector"]

HANDLERS = """
from projector import Event, Projection

balances = Projection("balances")

@balances.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    pass
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "shop_projections.py").write_text(textwrap.dedent(HANDLERS))
    return tmp_path


def get(port: int, path: str) -> tuple[int, str]:
    """The status and body of a GET; (0, reason) when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 0, str(exc.reason)


def wait_for(port: int, path: str, status: int, *, within: float = 20) -> str:
    deadline = time.monotonic() + within
    while (answer := get(port, path))[0] != status:
        assert time.monotonic() < deadline, f"{path} answered {answer}, expected {status}"
        time.sleep(0.05)
    return answer[1]


def start(workdir: Path, url: str, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *PROJECTOR,
            "run",
            "shop_projections:balances",
            "-c",
            "account",
            "--database-url",
            url,
            "--metrics-port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            *extra,
        ],
        cwd=workdir,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_running_projector_serves_its_probes_and_metrics_until_sigterm(
    workdir: Path, own_store_url: str
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(15)})
    port = free_port()
    process = start(
        workdir, own_store_url, port, "--health-max-db-age", "2", "--ready-max-lag", "0"
    )
    try:
        ready = json.loads(wait_for(port, "/ready", 200))
        health = json.loads(wait_for(port, "/health", 200))
        status, text = get(port, "/metrics")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 0, stderr
    assert ready["lag"] == {"account": 0}
    assert health["state"] == "running"
    assert status == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    account = (("category", "account"), ("group", "balances"))
    assert samples["projector_events_handled_total", account] == 30
    assert samples["projector_lag_events", account] == 0
    assert "action=metrics_serving" in stderr
    assert get(port, "/health")[0] == 0, "the port still answers after the process exited"


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_code_2(
    workdir: Path, own_store_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(workdir, own_store_url, port)
        _, stderr = process.communicate(timeout=30)

    assert process.returncode == 2
    assert stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}")
    assert stderr.count("\n") == 1
    assert "--metrics-port" in stderr
