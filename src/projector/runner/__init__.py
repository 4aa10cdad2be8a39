"""The runner: wiring and lifecycle of a projector process (see `projector.runner.runner`).

It may import anything in projector but `projector.admin` (what operators ask of a group from
outside a run); the CLI, the demo and the testing kit import it. How a runner holds its
streams, fixed member or elastic, is `projector.runner.tenancy`'s seam.
"""

from projector.runner.runner import Runner

__all__ = ["Runner"]
