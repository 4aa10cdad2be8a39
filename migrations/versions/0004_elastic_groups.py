"""Elastic consumer groups: the group's bucket count, its live members, and bucket leases.

An elastic group of B buckets keeps its checkpoints as a fixed group of size B whose members
are buckets (``projector.checkpoints`` unchanged); only who projects a bucket changes: a
process holds the bucket's lease row, renewed by heartbeats, fenced by its generation.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE projector.elastic_groups (
            group_name text PRIMARY KEY,
            buckets integer NOT NULL CHECK (buckets >= 1),
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute(
        """
        CREATE TABLE projector.elastic_members (
            group_name text NOT NULL REFERENCES projector.elastic_groups ON DELETE CASCADE,
            member_id text NOT NULL,
            host text NOT NULL,
            pid integer NOT NULL,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_name, member_id)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE projector.bucket_leases (
            group_name text NOT NULL REFERENCES projector.elastic_groups ON DELETE CASCADE,
            bucket integer NOT NULL CHECK (bucket >= 0),
            owner text,
            generation bigint NOT NULL DEFAULT 0,
            expires_at timestamptz NOT NULL DEFAULT '-infinity',
            PRIMARY KEY (group_name, bucket)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE projector.bucket_leases")
    op.execute("DROP TABLE projector.elastic_members")
    op.execute("DROP TABLE projector.elastic_groups")
