"""Stream positions: for transactional projections, each stream's last handled position.

Written in the same transaction as the handler's own writes, so an event at or below it is
known to be applied and is skipped however often it is delivered again (after a crash, a
rebalance or a checkpoint reset). One row per group and stream.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projector.stream_positions (
            group_name text NOT NULL,
            stream_name text NOT NULL,
            position bigint NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_name, stream_name)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.stream_positions")
