"""A writer process of the fault suite: appends events with Message DB's ``write_message`` to
random streams of several categories until SIGTERM, riding out every fault the suite injects.

    python -m tests.faults.writer URL SEED CATEGORIES STREAMS RATE

``RATE`` is events per second, in transactions of a few events each. A transaction whose
outcome is lost (the server went away during COMMIT) may or may not have written its events:
the suite checks what the store holds, whatever that is.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from types import FrameType

import psycopg

PER_TRANSACTION = 5
WRITE = "SELECT write_message(gen_random_uuid()::text, %s, 'Counted', %s::jsonb)"


class Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def main(url: str, seed: int, categories: list[str], streams: int, rate: float) -> None:
    rng = random.Random(seed)
    signal.signal(signal.SIGTERM, _stop)
    pause = PER_TRANSACTION / rate
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    try:
        while True:
            names = sorted(
                f"{rng.choice(categories)}-{rng.randrange(streams)}" for _ in range(PER_TRANSACTION)
            )
            try:
                if conn is None:
                    conn = psycopg.connect(
                        url,
                        connect_timeout=2,
                        application_name="fault-writer",
                        options="-c search_path=public,message_store",
                    )
                with conn.transaction():
                    for name in names:  # sorted: write_message locks categories in one order
                        conn.execute(WRITE, (name, f'{{"n": {rng.randrange(1, 1000)}}}'))
            except psycopg.OperationalError:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
                continue
            time.sleep(pause)
    except Stop:
        pass
    finally:
        if conn is not None:
            conn.close()


if __name__ == "__main__":
    url, seed, categories, streams, rate = sys.argv[1:]
    main(url, int(seed), categories.split(","), int(streams), float(rate))
