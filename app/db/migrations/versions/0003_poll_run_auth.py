"""poll_run records how the caller authenticated

Two nullable columns on this service's own poll_run table (the original app's tables are not
touched): `auth_method` (inngest_signature, bearer, oidc, unsigned) and `auth_email` (the
service account of an OIDC caller). Runs recorded before this migration keep NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2024-01-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot drop columns in place (downgrade); on PostgreSQL it is a
    # plain ALTER TABLE ... ADD COLUMN (nullable, no default: no table rewrite).
    with op.batch_alter_table("poll_run") as batch:
        batch.add_column(sa.Column("auth_method", sa.Text(), nullable=True))
        batch.add_column(sa.Column("auth_email", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("poll_run") as batch:
        batch.drop_column("auth_email")
        batch.drop_column("auth_method")
