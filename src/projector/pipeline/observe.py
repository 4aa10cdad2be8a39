"""Hooks the pipeline calls as things happen, for metrics, summaries and tracing.

The base `Observer` does nothing; the runner hands the sink and the sources one that fans out
to whatever is enabled. Hooks are called on the hot path: they must be quick and never raise.
The per-call hook is the hottest (once per handler call): the sink asks `call_hook` for it once,
and skips timing the calls altogether when no observer overrides it.
"""

from __future__ import annotations

from collections.abc import Callable

CallHook = Callable[[str, int, float, "BaseException | None"], None]


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

    def outage_started(self) -> None:
        """Handler calls found projector's database away; they wait for it."""

    def outage_ended(self, seconds: float) -> None:
        """The database answers again after an outage of ``seconds``."""

    def call_hook(self) -> CallHook | None:
        """`handler_finished`, or None when this observer does not override it."""
        if type(self).handler_finished is Observer.handler_finished:
            return None
        return self.handler_finished


class Observers(Observer):
    """Several observers as one."""

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers
        hooks = (observer.call_hook() for observer in observers)
        self._call_hooks = tuple(hook for hook in hooks if hook is not None)

    def events_read(self, category: str, count: int, seconds: float) -> None:
        for observer in self._observers:
            observer.events_read(category, count, seconds)

    def handler_finished(
        self, stream_name: str, count: int, seconds: float, error: BaseException | None
    ) -> None:
        for hook in self._call_hooks:
            hook(stream_name, count, seconds, error)

    def reconnecting(self, doing: str) -> None:
        for observer in self._observers:
            observer.reconnecting(doing)

    def outage_started(self) -> None:
        for observer in self._observers:
            observer.outage_started()

    def outage_ended(self, seconds: float) -> None:
        for observer in self._observers:
            observer.outage_ended(seconds)

    def call_hook(self) -> CallHook | None:
        if len(self._call_hooks) > 1:
            return self.handler_finished
        return self._call_hooks[0] if self._call_hooks else None


NO_OBSERVER = Observer()
