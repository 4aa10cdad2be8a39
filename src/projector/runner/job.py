"""What a runner runs: one projection, for one group, over its categories, with its settings."""

from __future__ import annotations

from dataclasses import dataclass

from projector.errors import ConfigurationError
from projector.model.projection import Projection
from projector.settings import Settings


@dataclass(frozen=True, slots=True)
class Job:
    """A projection with the group and categories it runs under (the settings' over the
    projection's own) and the database it runs against."""

    projection: Projection
    settings: Settings
    group: str
    categories: tuple[str, ...]
    database_url: str

    @classmethod
    def of(cls, projection: Projection, settings: Settings) -> Job:
        """The job, or ConfigurationError naming what is missing or contradictory."""
        categories = settings.categories or projection.categories
        group = settings.group or projection.group
        if not categories:
            raise ConfigurationError(
                "no category to read: pass --category NAME (or PROJECTOR_CATEGORIES=a,b), "
                f"or give Projection({projection.name!r}, categories=[...])"
            )
        if not settings.database_url:
            raise ConfigurationError(
                "no database: pass --database-url postgresql://... or set PROJECTOR_DATABASE_URL"
            )
        if any(dependency.group == group for dependency in projection.depends_on):
            raise ConfigurationError(
                f"group {group!r} cannot depend on itself: run it under another --group, "
                f"or drop Dependency({group!r}) from the projection"
            )
        return cls(projection, settings, group, categories, settings.database_url)
