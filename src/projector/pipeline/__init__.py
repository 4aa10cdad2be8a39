"""The pipeline: sources read batches, the lanes carry them, the streams sink schedules handler
calls per stream and reports batches done in order.

No SQL and no driver: it imports `projector.model` and `projector.errors` only. What it reads
from and what the calls do are handed to it (a reader, a span handler, a progress), so the
whole pipeline runs in tests without a database.
"""
