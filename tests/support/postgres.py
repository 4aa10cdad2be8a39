"""The server the tests run on: the testing kit's (`projector.testing.server`), under the names
the suite's modules import."""

from __future__ import annotations

from projector.errors import NoTestServerError
from projector.testing.plugin import give_up
from projector.testing.server import (
    ADMIN_URL_VARIABLE,
    PgServer,
    open_server,
    require_server_binaries,
)

__all__ = [
    "ADMIN_URL_VARIABLE",
    "NoTestServerError",
    "PgServer",
    "give_up",
    "open_server",
    "require_server_binaries",
]
