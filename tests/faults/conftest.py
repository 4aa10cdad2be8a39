"""The fault suite's server, its options and its time limit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from projector.localpg import LocalCluster
from tests.conftest import FAULT_REPORT_PROPERTY
from tests.faults.harness import Server
from tests.support import messagedb
from tests.support.postgres import NoTestServerError, give_up

# Beyond the faults themselves: start-up, rebalances, the catch-up and the checks.
OVERHEAD = 300.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario_run" in metafunc.fixturenames:
        runs = int(metafunc.config.getoption("--scenario-runs"))
        metafunc.parametrize("scenario_run", range(1, runs + 1), ids=lambda run: f"run{run}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    limit = 2 * float(config.getoption("--faults-duration")) + OVERHEAD
    for item in items:
        if item.path.parent.name == "faults":
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture
def fault_server(throwaway_cluster: LocalCluster, pytestconfig: pytest.Config) -> Server:
    """A server of the suite's own (it is restarted) with Message DB 1.3.1 and the tables."""
    try:
        scripts = messagedb.database_scripts(pytestconfig.rootpath / ".cache" / "message-db")
    except NoTestServerError as exc:
        give_up(str(exc))
    return Server.install(throwaway_cluster, scripts)


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Lines printed at the end of the run, in the "fault injection" section."""
    lines: list[str] = []
    yield lines
    request.node.user_properties.append((FAULT_REPORT_PROPERTY, lines))
