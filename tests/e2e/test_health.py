"""`projector run --metrics-port` as a user runs it: probes and scrapes over HTTP, SIGTERM."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import anyio
from prometheus_client.parser import text_string_to_metric_families

from projector.localpg import free_port
from tests.support.cli import BALANCES, ProjectorProcess
from tests.support.projecting import write_events


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


def start(
    workdir: Path, processes: list[ProjectorProcess], url: str, port: int, *extra: str
) -> ProjectorProcess:
    process = ProjectorProcess.start(
        workdir,
        "run",
        *("run", BALANCES, "-c", "account", "--database-url", url),
        *("--metrics-port", str(port), "--metrics-host", "127.0.0.1", *extra),
    )
    processes.append(process)
    return process


def test_a_running_projector_serves_its_probes_and_metrics_until_sigterm(
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    anyio.run(write_events, own_store_url, {f"account-{i}": 2 for i in range(15)})
    port = free_port()
    process = start(
        tmp_path, processes, own_store_url, port, "--health-max-db-age", "2", "--ready-max-lag", "0"
    )
    ready = json.loads(wait_for(port, "/ready", 200))
    health = json.loads(wait_for(port, "/health", 200))
    status, text = get(port, "/metrics")

    code = process.stop()

    stderr = process.stderr
    assert code == 0, stderr
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
    tmp_path: Path, own_store_url: str, processes: list[ProjectorProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start(tmp_path, processes, own_store_url, port)
        code = process.wait(timeout=30)

    stderr = process.stderr
    assert code == 2
    assert stderr.startswith(f"error: cannot serve metrics on 127.0.0.1:{port}")
    assert stderr.count("\n") == 1
    assert "--metrics-port" in stderr
