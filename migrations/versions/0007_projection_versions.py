"""Projection versions: each version of a projection rebuilt beside the live one, and its state.

One row per projection and version: the group it projects under, the schema holding its
tables (NULL: ``public``, or none of projector's), and its state: ``building`` (projected, not
serving), ``live`` (readers' views point at it), ``previous`` (was live, still projecting: what
a rollback returns to), ``retired``; at most one live and one previous per projection. A
projection with no row is version 1, live, in ``public``, under a group named after it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projector.projection_versions (
            projection text NOT NULL,
            version integer NOT NULL CHECK (version >= 1),
            group_name text NOT NULL UNIQUE,
            schema_name text,
            state text NOT NULL
                CONSTRAINT projection_versions_state
                CHECK (state IN ('building', 'live', 'previous', 'retired')),
            created_at timestamptz NOT NULL DEFAULT now(),
            live_since timestamptz,
            retired_at timestamptz,
            projecting_since timestamptz,
            PRIMARY KEY (projection, version)
        )
        """
    )
    for state in ("live", "previous"):  # at most one of each per projection
        op.execute(
            f"CREATE UNIQUE INDEX projection_versions_one_{state} "
            f"ON projector.projection_versions (projection) WHERE state = '{state}'"
        )
    op.execute(
        "COMMENT ON COLUMN projector.projection_versions.projecting_since IS "
        "'when a runner first projected the version (its catch-up estimate counts from here)'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.projection_versions")
