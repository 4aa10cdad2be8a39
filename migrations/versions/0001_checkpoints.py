"""Checkpoints: the next global position to read, per group and category.

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
            category text NOT NULL,
            position bigint NOT NULL CHECK (position >= 0),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_name, category)
        )
        """
    )
    op.execute(
        "COMMENT ON COLUMN projector.checkpoints.position IS "
        "'the next global position to read: every event below it is handled'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.checkpoints")
