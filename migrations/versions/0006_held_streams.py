"""Held streams: a failing stream is recorded and taken out of the read path at its first
failure, not only once its retries run out.

``projector.parked_streams`` becomes ``projector.held_streams``, one row per stream a group holds
out of its read path, in one of two states: ``retrying`` (its next attempt is due at
``next_attempt_at``, when the runner that owns it replays it from the stream itself) and
``parked`` (its attempts are used up; an operator's retry replays it). ``held_at`` is when the
stream first failed in this episode, ``failed_at`` (the former ``parked_at``) when it failed last.
Rows already there were parked, and stay so. Privileges granted on the table carry over.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE projector.parked_streams RENAME TO held_streams")
    op.execute("ALTER INDEX projector.parked_streams_pkey RENAME TO held_streams_pkey")
    op.execute("ALTER TABLE projector.held_streams RENAME COLUMN parked_at TO failed_at")
    op.execute(
        """
        ALTER TABLE projector.held_streams
            ADD COLUMN state text NOT NULL DEFAULT 'parked'
                CONSTRAINT held_streams_state CHECK (state IN ('retrying', 'parked')),
            ADD COLUMN held_at timestamptz,
            ADD COLUMN next_attempt_at timestamptz,
            ADD CONSTRAINT held_streams_next_attempt
                CHECK ((state = 'retrying') = (next_attempt_at IS NOT NULL))
        """
    )
    op.execute("UPDATE projector.held_streams SET held_at = failed_at")
    op.execute(
        """
        ALTER TABLE projector.held_streams
            ALTER COLUMN state DROP DEFAULT,
            ALTER COLUMN held_at SET NOT NULL,
            ALTER COLUMN held_at SET DEFAULT now()
        """
    )
    op.execute(
        "COMMENT ON COLUMN projector.held_streams.position IS "
        "'the stream position of the first unhandled event: a replay starts here'"
    )


def downgrade() -> None:
    # Retrying streams become parked ones: an operator's retry replays them.
    op.execute(
        """
        ALTER TABLE projector.held_streams
            DROP CONSTRAINT held_streams_next_attempt,
            DROP COLUMN state,
            DROP COLUMN held_at,
            DROP COLUMN next_attempt_at
        """
    )
    op.execute("ALTER TABLE projector.held_streams RENAME COLUMN failed_at TO parked_at")
    op.execute("ALTER INDEX projector.held_streams_pkey RENAME TO parked_streams_pkey")
    op.execute("ALTER TABLE projector.held_streams RENAME TO parked_streams")
