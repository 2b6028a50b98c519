"""poll_run records why users were skipped

One nullable JSON column on this service's own poll_run table: `skipped_reasons`, the run's
users skipped per reason (`{"fresh": 1}`), as /api/poll answers it. A run history that says
"1 skipped" without the reason leaves the operator guessing. Runs before this migration keep
NULL.

Revision ID: 0008
Revises: 0007
Create Date: 2024-01-08 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode for SQLite's downgrade; on PostgreSQL a plain ADD COLUMN (no table rewrite).
    with op.batch_alter_table("poll_run") as batch:
        batch.add_column(sa.Column("skipped_reasons", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("poll_run") as batch:
        batch.drop_column("skipped_reasons")
