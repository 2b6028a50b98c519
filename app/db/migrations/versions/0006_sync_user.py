"""sync_user: what this service last wrote to a user's LastSync

One row per user in this service's own table: the `lastSyncAt` its last successful sync of
the user wrote. A LastSync holding anything else was written by someone else: the original
app's Refresh button (which can no longer store rows on a per-user key, but still moves
LastSync), followed by a sync of that user (app/sync/app_refresh.py); `app_refresh_seen_at`
is the LastSync value already followed, so no process follows it twice.

Revision ID: 0006
Revises: 0005
Create Date: 2024-01-06 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sync_user",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("last_sync_at", TS, nullable=True),
        sa.Column("app_refresh_seen_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name="sync_user_user_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name="sync_user_pkey"),
    )


def downgrade() -> None:
    op.drop_table("sync_user")
