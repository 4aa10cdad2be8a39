"""The server the tests run on: the testing kit's (`projector.testing.server`), under the names
the suite's modules import."""

from __future__ import annotations

from projector.testing.plugin import give_up
from projector.testing.server import (
    ADMIN_URL_VARIABLE,
    PgServer,
    Unavailable,
    open_server,
    require_server_binaries,
)

__all__ = [
    "ADMIN_URL_VARIABLE",
    "PgServer",
    "Unavailable",
    "give_up",
    "open_server",
    "require_server_binaries",
]
