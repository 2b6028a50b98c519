"""poll_run records the shard of a sharded poll

Two nullable integer columns on this service's own poll_run table: `shard` and `shards` of a
run started with `{"shard": k, "shards": N}`. Other runs (and runs before this migration) keep
NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2024-01-05 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode for SQLite's downgrade; on PostgreSQL a plain ADD COLUMN (no table rewrite).
    with op.batch_alter_table("poll_run") as batch:
        batch.add_column(sa.Column("shard", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("shards", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("poll_run") as batch:
        batch.drop_column("shards")
        batch.drop_column("shard")
