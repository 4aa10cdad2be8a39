"""The projections the end-to-end tests run as `projector run tests.support.shop_projections:NAME`
(`tests.support.cli` puts the repository on the process's PYTHONPATH).

``balances`` is at least once; its one handler is steered by environment variables:

- ``HANDLER_DELAY``: seconds each call waits before anything else;
- ``FAILING_STREAMS``: comma-separated streams whose calls raise ``RuntimeError("cannot project
  <stream>")``;
- ``HANDLED_FILE``: each call that returns appends one line, ``<stream> <position>:<global
  position> ...`` for the events it was given, in one write (a kill lands between calls, not
  inside one). `tests.support.cli.handled` and `calls` read it back.

``exactly_once`` is the transactional account balances of `tests.support.balances`, slow enough
that kills land mid-catch-up, between handled spans and checkpoint commits.
"""

from __future__ import annotations

import os

import anyio

from projector import Event, Projection
from tests.support.balances import balances_projection

balances = Projection("balances")
exactly_once = balances_projection(delay=0.005)
not_a_projection = 42


@balances.handler
async def handle(stream_name: str, events: list[Event]) -> None:
    await anyio.sleep(float(os.environ.get("HANDLER_DELAY", "0")))
    if stream_name in os.environ.get("FAILING_STREAMS", "").split(","):
        raise RuntimeError(f"cannot project {stream_name}")
    handled = os.environ.get("HANDLED_FILE")
    if handled:
        line = " ".join([stream_name, *(f"{e.position}:{e.global_position}" for e in events)])
        async with await anyio.open_file(handled, "a") as out:
            await out.write(line + "\n")
