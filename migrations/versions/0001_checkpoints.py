"""Checkpoints: the next global position to read, per group member and category.

A plain group is member 0 of a group of size 1; a consumer group of size n has members 0..n-1,
each with its own rows, shown as ``<group>-<member>``.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projector.checkpoints (
            group_name text NOT NULL,
            member integer NOT NULL DEFAULT 0 CHECK (member >= 0),
            group_size integer NOT NULL DEFAULT 1 CHECK (group_size >= 1 AND member < group_size),
            category text NOT NULL,
            position bigint NOT NULL CHECK (position >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            checkpoint_name text GENERATED ALWAYS AS (
                CASE WHEN group_size = 1 THEN group_name ELSE group_name || '-' || member END
            ) STORED,
            PRIMARY KEY (group_name, member, category)
        )
        """
    )
    op.execute(
        "COMMENT ON COLUMN projector.checkpoints.position IS "
        "'the next global position to read: every event below it is handled'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.checkpoints")
