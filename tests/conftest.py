"""Database fixtures for every integration and end-to-end test.

The server and projector's own store come from the testing kit's plugin (`projector.testing`,
loaded by its entry point): ``pg_server`` is its ``projector_server``, ``own_template`` its
template with no read model's tables, and ``own_store_url`` its ``projector_database_url``.

``database_url`` runs a test once per store flavour: ``own`` (projector's Message DB-compatible
store) and ``messagedb`` (the real Eventide Message DB). Both have projector's tables. To pin a
test to one flavour:
``@pytest.mark.parametrize("store_kind", ["messagedb"], ids=["store=messagedb"], indirect=True)``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import hypothesis
import pytest

from projector.localpg import LocalCluster, temporary_cluster
from projector.storage import database, migrate
from projector.storage.database import Connection
from projector.testing.server import Templates
from tests.support import messagedb
from tests.support.postgres import NoTestServerError, PgServer, give_up, require_server_binaries

STORE_KINDS = ("own", "messagedb")
FAULT_REPORT_PROPERTY = "fault_report"  # a test's user property: the lines it reports

# Property tests check what holds, not how fast: Hypothesis's default 200 ms deadline per
# example fails them when the machine is busy.
hypothesis.settings.register_profile("projector", deadline=None)
hypothesis.settings.load_profile("projector")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("projector")
    group.addoption(
        "--faults-duration",
        type=float,
        default=35.0,
        help="seconds of random faults in the fault suite (tests/faults); `make faults` runs 600",
    )
    group.addoption(
        "--scenario-runs",
        type=int,
        default=1,
        help="how many times each fault scenario runs (tests/faults, marker scenario)",
    )
    group.addoption(
        "--faults-seed",
        type=int,
        default=None,
        help="the fault suite's random seed (default: a new one each run, printed)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's figures, printed whether its test passed or failed. They travel as
    the tests' user properties, which pytest-xdist brings back from its workers."""
    lines = [
        str(line)
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(report, pytest.TestReport) and report.when == "teardown"
        for name, value in report.user_properties
        if name == FAULT_REPORT_PROPERTY and isinstance(value, list)
        for line in value
    ]
    if lines:
        terminalreporter.write_sep("-", "fault injection")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests run on asyncio, as `projector run` does (uvloop is an asyncio loop)."""
    return "asyncio"


@pytest.fixture
async def own_store_conn(own_store_url: str) -> AsyncIterator[Connection]:
    """An autocommit connection to a fresh database with projector's own store."""
    connection = await database.connect(own_store_url)
    await connection.set_autocommit(True)
    async with connection:
        yield connection


@pytest.fixture(scope="session")
def pg_server(projector_server: PgServer) -> PgServer:
    """The session's server: PROJECTOR_TEST_DATABASE_URL, Docker, or a throwaway cluster."""
    return projector_server


@pytest.fixture(scope="session")
def own_template(projector_templates: Templates) -> str:
    """projector's own message store and tables, built once per session."""
    return projector_templates.of()


@pytest.fixture(scope="session")
def messagedb_template(pg_server: PgServer, pytestconfig: pytest.Config) -> Iterator[str]:
    """Eventide Message DB (from npm, cached in .cache/) and projector's tables, built once."""
    try:
        scripts = messagedb.database_scripts(pytestconfig.rootpath / ".cache" / "message-db")
    except NoTestServerError as exc:
        give_up(str(exc))

    def install(url: str) -> None:
        messagedb.install(url, scripts)
        migrate.upgrade(url)

    with pg_server.template(install) as name:
        yield name


@pytest.fixture(params=STORE_KINDS, ids=[f"store={kind}" for kind in STORE_KINDS])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def database_url(
    pg_server: PgServer, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database of the test's own, cloned from ``store_kind``'s template."""
    template: str = request.getfixturevalue(f"{store_kind}_template")
    with pg_server.database(template=template) as url:
        yield url


@pytest.fixture
def own_store_url(projector_database_url: str) -> str:
    """A database of the test's own with projector's own message store and tables."""
    return projector_database_url


@pytest.fixture
def empty_database_url(pg_server: PgServer) -> Iterator[str]:
    """A new database with nothing installed in it."""
    with pg_server.database() as url:
        yield url


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """A data folder for a local cluster, two levels below a new temp folder (which the server
    user may pass through); any server left on it is stopped, and the folder removed."""
    try:
        require_server_binaries()
    except NoTestServerError as exc:
        give_up(str(exc))
    as_root = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="projector-test-", dir="/tmp" if as_root else None))
    base.chmod(0o711)
    yield base / "demo" / "pg"
    LocalCluster(base / "demo" / "pg").stop()
    shutil.rmtree(base)


@pytest.fixture
def throwaway_cluster() -> Iterator[LocalCluster]:
    """A started server of the test's own, to stop and restart at will; stopped at teardown."""
    try:
        require_server_binaries()
    except NoTestServerError as exc:
        give_up(str(exc))
    with temporary_cluster() as cluster:
        yield cluster
