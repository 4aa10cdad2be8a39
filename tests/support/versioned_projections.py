"""The versions the end-to-end rebuild tests run as `projector run
tests.support.versioned_projections:v1` (or ``v2``): `tests.support.ledger`'s, each call of
their handler slowed by ``HANDLER_DELAY`` seconds (so that a kill lands mid-rebuild)."""

from __future__ import annotations

import os

from tests.support.ledger import ledger

DELAY = float(os.environ.get("HANDLER_DELAY", "0"))

v1 = ledger(1, delay=DELAY)
v2 = ledger(2, delay=DELAY)
