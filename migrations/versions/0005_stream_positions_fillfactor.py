"""Room on each page of ``projector.stream_positions`` for its rows' next versions.

Every transactional call updates its stream's row (the position and when), and neither column
is indexed, so the update can be HOT (heap-only: the new version on the same page, no new
index entry) whenever the page has room. At the default fillfactor of 100 the pages are full
from the first insert, so every update goes to another page and adds an index entry, which
later vacuuming must remove. Half-full pages keep the updates of a batch of streams HOT.

The setting applies to pages written from now on; ``VACUUM FULL projector.stream_positions``
rewrites the existing ones (it locks the table while it runs, so pick a quiet moment).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE projector.stream_positions SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE projector.stream_positions RESET (fillfactor)")
