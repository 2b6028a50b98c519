"""access loss and reconciliation columns on sync_cursor

Adds to this service's own `sync_cursor` (the original app's tables are not touched): where
each project's stored history begins (`backfill_from`), the access-loss confirmation state
(`access_check_at`, `access_lost_at`) and the reconciliation schedule and hold
(`reconcile_due_at`, `reconciled_at`, `reconcile_held`, `reconcile_held_at`). Every column is
nullable, so existing rows stay valid: a NULL `backfill_from` on a synced project means its
window is unknown, which reconciliation treats as "all history, remove only".

Revision ID: 0004
Revises: 0003
Create Date: 2024-01-04 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")

_TIMES = (
    "backfill_from",
    "access_check_at",
    "access_lost_at",
    "reconcile_due_at",
    "reconciled_at",
    "reconcile_held_at",
)


def upgrade() -> None:
    for name in _TIMES:
        op.add_column("sync_cursor", sa.Column(name, TS, nullable=True))
    op.add_column("sync_cursor", sa.Column("reconcile_held", sa.Text(), nullable=True))


def downgrade() -> None:
    # SQLite cannot drop columns in place: batch mode copies the table.
    with op.batch_alter_table("sync_cursor") as batch:
        batch.drop_column("reconcile_held")
        for name in reversed(_TIMES):
            batch.drop_column(name)
