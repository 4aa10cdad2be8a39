"""The process a run lives in: its signals, its event loop, its garbage collector.

`serve` turns SIGINT/SIGTERM into a graceful stop of the run (a second signal ends the process
at once, `stop_now`); `backend_options` picks the event loop; `collect_garbage_less_often`
tunes the collector for a projecting process. The runner and the CLI use these; nothing below
them does.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import NoReturn

import anyio

from projector.settings import EventLoop, Settings

logger = logging.getLogger(__name__)


GC_FIRST_GENERATION = 10_000  # allocations between young collections (Python's default: 700)


def collect_garbage_less_often() -> None:
    """Tune the cyclic garbage collector for a projecting process (its entry point calls this).

    A catch-up allocates and frees several objects per event, and the batches in flight (up to
    ``max_read_ahead`` of them) are alive long enough to be traversed again and again by
    young-generation collections at Python's default threshold, for nothing: reference
    counting frees these objects anyway. Collecting cycles less often costs a little memory,
    not correctness.
    """
    first, *older = gc.get_threshold()
    gc.set_threshold(max(GC_FIRST_GENERATION, first), *older)


def backend_options(settings: Settings) -> dict[str, bool]:
    """anyio's options for the loop a run asks for (``event_loop``): uvloop when installed.

    uvloop's loop is written in C, and psycopg's async waits go through the loop at every
    round trip: a handler that makes one per call spends much of its time there.
    """
    wanted = settings.event_loop is EventLoop.UVLOOP
    return {"use_uvloop": wanted and importlib.util.find_spec("uvloop") is not None}


async def serve(main: Callable[[], Awaitable[None]]) -> None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives, which cancels it gracefully
    (running handler calls get ``shutdown_timeout`` to finish, the checkpoint is committed); a
    second signal while it stops ends the process at once."""
    # Shielded: the first signal cancels the task group, and the second must still be heard.
    listening = anyio.CancelScope(shield=True)
    async with anyio.create_task_group() as tasks:

        async def watch_signals() -> None:
            with listening, anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if tasks.cancel_scope.cancel_called:
                        stop_now(
                            signum,
                            f"received {name} again: stopping now, without waiting for running "
                            "handler calls; what was handled since the last checkpoint commit "
                            "is delivered again at the next start",
                        )
                    logger.info(
                        "received %s, stopping (once more to stop at once)",
                        name,
                        extra={"action": "stopping", "signal": name},
                    )
                    tasks.cancel_scope.cancel()

        tasks.start_soon(watch_signals, name="projector-signals")
        try:
            await main()
        finally:
            listening.cancel()
        tasks.cancel_scope.cancel()


def stop_now(signum: int, message: str) -> NoReturn:
    """End the process at once (exit 128 + signal), saying why in one line. Nothing more is
    committed: what was handled since the last checkpoint commit is delivered again."""
    name = signal.Signals(signum).name
    logger.warning(message, extra={"action": "stopping_now", "signal": name})
    logging.shutdown()
    os._exit(128 + signum)
