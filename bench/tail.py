"""The steady writer of the tail-latency scenario: ``rate`` events a second through the store's
``write_message``, one event (one transaction) at a time, over ``streams`` streams of one
category."""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg

from projector.storage.database import SESSION_SETTINGS
from projector.storage.message_store import WRITE_MESSAGE


class SteadyWriter:
    """Writes in a background thread from `start` until `stop`; `written` counts the events."""

    def __init__(self, url: str, category: str, rate: float, *, streams: int = 100) -> None:
        self._url = url
        self._streams = streams
        self._category = category
        self._rate = rate
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._write, name="bench-writer", daemon=True)
        self.written = 0
        self.behind = 0  # events written later than their due time by more than 10 ms

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _write(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(SESSION_SETTINGS)
            started = time.perf_counter()
            while not self._stopping.is_set():
                delay = started + self.written / self._rate - time.perf_counter()
                if delay > 0:
                    self._stopping.wait(delay)
                elif delay < -0.01:
                    self.behind += 1
                conn.execute(WRITE_MESSAGE, self._message(self.written))
                self.written += 1

    def _message(self, index: int) -> dict[str, object]:
        return {
            "id": str(uuid.uuid4()),
            "stream_name": f"{self._category}-{index % self._streams}",
            "type": "Deposited",
            "data": json.dumps({"amount": index}),
            "metadata": None,
            "expected_version": None,
        }
