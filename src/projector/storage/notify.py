"""Waking sources early: LISTEN for the NOTIFY that projector's opt-in trigger sends.

With the trigger installed (``projector migrate --notify``), a write to a category wakes the
sources reading it within milliseconds, so ``tail_sleep`` can stay long (it remains the fallback
when a notification is missed, e.g. while the listening connection reconnects).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from projector.errors import DatabaseUnavailableError
from projector.reconnecting import outlasting
from projector.storage import database
from projector.storage.database import Connection

logger = logging.getLogger(__name__)

LISTEN = "LISTEN projector_messages"
INSTALLED = """
SELECT EXISTS (
    SELECT FROM pg_trigger
    WHERE tgname = 'projector_notify' AND tgrelid = to_regclass('message_store.messages')
)
"""


def trigger_sql() -> str:
    return (resources.files("projector.storage") / "sql" / "notify.sql").read_text()


def install(url: str) -> None:
    """Install (or refresh) the NOTIFY trigger on message_store.messages."""
    with database.connect_sync(url) as conn:
        conn.execute(trigger_sql().encode())


async def installed(conn: Connection) -> bool:
    """Whether the wake-up trigger is installed (`projector migrate --notify`)."""
    row = await (await conn.execute(INSTALLED)).fetchone()
    return bool(row and row[0])


async def listen(
    url: str,
    wake: Callable[[str], None],
    *,
    outage_limit: float,
    task_status: TaskStatus[None] = TASK_STATUS_IGNORED,
) -> None:
    """Call ``wake(category)`` for every notification, forever (cancel to stop); reconnect
    through outages like the sources do. Started (for ``task_group.start``) once listening."""
    while True:
        conn = await outlasting(
            lambda: database.connect(url), doing="listening for new events", limit=outage_limit
        )
        async with conn:
            await conn.set_autocommit(True)
            await conn.execute(LISTEN)
            task_status.started()
            task_status = TASK_STATUS_IGNORED
            try:
                async for notification in conn.notifies():
                    wake(notification.payload)
            except DatabaseUnavailableError as exc:
                logger.warning(
                    "lost the connection listening for new events: %s",
                    exc,
                    extra={"action": "reconnecting", "doing": "listening for new events"},
                )
