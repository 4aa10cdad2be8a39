"""Hooks the pipeline calls as things happen, for metrics, summaries and tracing.

The base `Observer` does nothing; the runner hands the sink and the sources one that fans out
to whatever is enabled. Hooks are called on the hot path: they must be quick and never raise.
"""

from __future__ import annotations


class Observer:
    """Does nothing; subclass and override the hooks you need."""

    def events_read(self, category: str, count: int, seconds: float) -> None:
        """A read of ``count`` events (0 at the tail) took ``seconds``."""

    def handler_finished(
        self, stream_name: str, count: int, seconds: float, error: BaseException | None
    ) -> None:
        """A handler call with ``count`` events ended after ``seconds``, failed if ``error``."""

    def reconnecting(self, doing: str) -> None:
        """A database operation failed for want of the database and will be tried again."""


class Observers(Observer):
    """Several observers as one."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def events_read(self, category: str, count: int, seconds: float) -> None:
        for observer in self._observers:
            observer.events_read(category, count, seconds)

    def handler_finished(
        self, stream_name: str, count: int, seconds: float, error: BaseException | None
    ) -> None:
        for observer in self._observers:
            observer.handler_finished(stream_name, count, seconds, error)

    def reconnecting(self, doing: str) -> None:
        for observer in self._observers:
            observer.reconnecting(doing)


NO_OBSERVER = Observer()
