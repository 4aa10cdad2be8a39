"""The PostgreSQL server tests run on, and the databases each test gets from it.

The server is, in this order: the one at ``PROJECTOR_TEST_DATABASE_URL`` (an admin URL on which
the tests may CREATE DATABASE), a testcontainers container when a Docker engine answers, or a
throwaway cluster from the local server binaries (`projector.localpg`). A store is built once
per session into a template database; every test gets a clone of it (``CREATE DATABASE ...
TEMPLATE``), so tests are isolated with no cleanup code of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

from projector.errors import ConfigurationError, NoTestServerError
from projector.localpg import server_bindir, temporary_cluster
from projector.storage import scratch

ADMIN_URL_VARIABLE = "PROJECTOR_TEST_DATABASE_URL"
CONTAINER_IMAGE = "postgres:15"
DOCKER_PING_TIMEOUT = 2


@dataclass(frozen=True)
class PgServer:
    """A server on which the tests may create and drop databases."""

    admin_url: str

    def url_for(self, dbname: str) -> str:
        """The admin URL pointed at another database."""
        return scratch.url_for(self.admin_url, dbname)

    @contextmanager
    def database(self, *, template: str = "template0") -> Iterator[str]:
        """A new database copied from ``template``, dropped on exit; yields its URL."""
        with self._new_database("projector_test", template) as name:
            yield self.url_for(name)

    @contextmanager
    def template(self, install: Callable[[str], None]) -> Iterator[str]:
        """A new database prepared once by ``install(url)``, to clone; yields its name.

        ``install`` must close its connections: CREATE DATABASE ... TEMPLATE refuses a source
        that anyone is connected to.
        """
        with self._new_database("projector_template", "template0") as name:
            install(self.url_for(name))
            yield name

    @contextmanager
    def _new_database(self, prefix: str, template: str) -> Iterator[str]:
        # A random name: sessions sharing one server (pytest-xdist's workers) must not collide.
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        scratch.create_database(self.admin_url, name, template=template)
        try:
            yield name
        finally:
            scratch.drop_database(self.admin_url, name)


Schema = Callable[[str], None]
"""What creates a read model's tables, given the database's URL."""


class Templates:
    """Template databases with projector's own store and tables, and a read model's tables on
    top (one per ``schema``), each built on first use and dropped when ``stack`` closes."""

    def __init__(self, server: PgServer, stack: ExitStack) -> None:
        self._server = server
        self._stack = stack
        self._built: dict[Schema | None, str] = {}

    def of(self, schema: Schema | None = None) -> str:
        """The name of the template with ``schema``'s tables (None: the store's alone)."""
        if schema not in self._built:
            template = self._server.template(partial(install_store, schema=schema))
            self._built[schema] = self._stack.enter_context(template)
        return self._built[schema]


def install_store(url: str, *, schema: Schema | None = None) -> None:
    """projector's own Message DB-compatible store and projector's tables, on a new database;
    then ``schema``'s, if given."""
    # Imported here: Alembic and SQLAlchemy take a second or more to import, and pytest loads
    # this plugin in every run, most of which build no template.
    from projector.storage import migrate

    migrate.install_message_store(url)
    migrate.upgrade(url)
    if schema is not None:
        schema(url)


def open_server(stack: ExitStack) -> PgServer:
    """The first server to be had, stopped when ``stack`` closes; NoTestServerError when none is."""
    admin_url = os.environ.get(ADMIN_URL_VARIABLE)
    if admin_url:
        return PgServer(admin_url)
    container_url = _container_url(stack)
    if container_url is not None:
        return PgServer(container_url)
    try:
        require_server_binaries()
    except NoTestServerError as exc:
        raise NoTestServerError(
            f"no PostgreSQL server for the tests: set {ADMIN_URL_VARIABLE}, start Docker, "
            f"or install the server binaries ({exc})"
        ) from exc
    return PgServer(stack.enter_context(temporary_cluster()).url)


def require_server_binaries() -> None:
    """NoTestServerError when there are no local server binaries; a failure to start is an error."""
    try:
        server_bindir()
    except ConfigurationError as exc:
        raise NoTestServerError(str(exc)) from exc


def _container_url(stack: ExitStack) -> str | None:
    """A testcontainers server's URL when a Docker engine answers; None when none does (or
    testcontainers is not installed)."""
    try:
        import docker  # type: ignore[import-untyped]
        import requests
    except ImportError:
        return None
    try:
        docker.from_env(timeout=DOCKER_PING_TIMEOUT).ping()
    except (docker.errors.DockerException, requests.RequestException):
        return None
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            from testcontainers.postgres import PostgresContainer  # before the community/ split
        except ImportError:
            return None
    container = stack.enter_context(PostgresContainer(CONTAINER_IMAGE, driver=None))
    return str(container.get_connection_url())
