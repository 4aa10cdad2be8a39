"""Dependencies between groups, as a projection declares them (`Projection(depends_on=...)`);
`projector.runtime.dependencies` measures them and holds events back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from projector.errors import ConfigurationError
from projector.model.events import validate_group

PauseCallback = Callable[[str], None]
"""Called with the reason when a projection pauses (``on_pause``), and with the reason the pause
had when it resumes (``on_resume``). Called on the runner's event loop: keep it quick."""


@dataclass(frozen=True, slots=True)
class Dependency:
    """The upstream ``group`` this projection waits for; with ``max_lag``, it also pauses while
    the upstream has more than that many events left to handle."""

    group: str
    max_lag: int | None = None

    def __post_init__(self) -> None:
        validate_group(self.group)
        if self.max_lag is not None and self.max_lag < 0:
            raise ConfigurationError(
                f"Dependency({self.group!r}, max_lag={self.max_lag}): max_lag must be 0 or "
                "more, or None for no limit"
            )
