"""Parked streams: streams set aside after their handler kept failing, until retried or skipped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projector.parked_streams (
            group_name text NOT NULL,
            stream_name text NOT NULL,
            category text NOT NULL,
            position bigint NOT NULL CHECK (position >= 0),
            global_position bigint NOT NULL,
            event_id uuid NOT NULL,
            event_type text NOT NULL,
            error text NOT NULL,
            traceback text NOT NULL,
            attempts integer NOT NULL,
            parked_at timestamptz NOT NULL DEFAULT now(),
            retry_requested_at timestamptz,
            PRIMARY KEY (group_name, stream_name)
        )
        """
    )
    op.execute(
        "COMMENT ON COLUMN projector.parked_streams.position IS "
        "'the stream position of the first unhandled event: a retry replays from here'"
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.parked_streams")
