"""original schema

The five tables of the original TypeScript app exactly as its Prisma migrations made
them on PostgreSQL (names, TIMESTAMP(3), TEXT[] labels, constraint and index names), so a
fresh database is indistinguishable from an adopted one. An existing Prisma database is
stamped at this revision instead of running it. Deliberately written out rather than
derived from the models: the models describe the final schema, this the original one.

Revision ID: 0001
Revises:
Create Date: 2024-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Prisma's types on PostgreSQL, the closest ones on SQLite.
TS = sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
LABELS = sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")
NOW = sa.text("CURRENT_TIMESTAMP")


def _created_at() -> sa.Column:
    return sa.Column("createdAt", TS, nullable=False, server_default=NOW)


def _updated_at() -> sa.Column:
    # No default: Prisma set updatedAt client-side.
    return sa.Column("updatedAt", TS, nullable=False)


def _user_fk(table: str) -> sa.ForeignKeyConstraint:
    # Prisma's default onUpdate for a required relation is CASCADE.
    return sa.ForeignKeyConstraint(
        ["userId"],
        ["user.id"],
        name=f"{table}_userId_fkey",
        ondelete="CASCADE",
        onupdate="CASCADE",
    )


def upgrade() -> None:
    op.create_table(
        "user",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("emailVerified", sa.Boolean(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        _created_at(),
        _updated_at(),
        sa.PrimaryKeyConstraint("id", name="user_pkey"),
    )
    op.create_index("user_email_key", "user", ["email"], unique=True)

    op.create_table(
        "account",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("accountId", sa.Text(), nullable=False),
        sa.Column("providerId", sa.Text(), nullable=False),
        sa.Column("accessToken", sa.Text(), nullable=True),
        sa.Column("refreshToken", sa.Text(), nullable=True),
        sa.Column("idToken", sa.Text(), nullable=True),
        sa.Column("accessTokenExpiresAt", TS, nullable=True),
        sa.Column("refreshTokenExpiresAt", TS, nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("password", sa.Text(), nullable=True),
        _created_at(),
        _updated_at(),
        sa.PrimaryKeyConstraint("id", name="account_pkey"),
        _user_fk("account"),
    )
    op.create_index("account_userId_idx", "account", ["userId"])
    op.create_index(
        "account_providerId_accountId_key", "account", ["providerId", "accountId"], unique=True
    )

    op.create_table(
        "MonitoredProject",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("gitlabProjectId", sa.Text(), nullable=False),
        sa.Column("projectName", sa.Text(), nullable=False),
        sa.Column("projectPath", sa.Text(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="MonitoredProject_pkey"),
        _user_fk("MonitoredProject"),
    )
    op.create_index("MonitoredProject_userId_idx", "MonitoredProject", ["userId"])
    op.create_index(
        "MonitoredProject_userId_gitlabProjectId_key",
        "MonitoredProject",
        ["userId", "gitlabProjectId"],
        unique=True,
    )

    op.create_table(
        "Event",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("authorAvatar", sa.Text(), nullable=True),
        sa.Column("project", sa.Text(), nullable=False),
        sa.Column("projectId", sa.Text(), nullable=False),
        sa.Column("labels", LABELS, nullable=True),
        sa.Column("gitlabEventId", sa.Text(), nullable=False),
        sa.Column("gitlabUrl", sa.Text(), nullable=False),
        _created_at(),
        _updated_at(),
        sa.PrimaryKeyConstraint("id", name="Event_pkey"),
        _user_fk("Event"),
    )
    # The original's defect (unique on gitlabEventId alone) is reproduced here on
    # purpose and fixed by 0002, so fresh and adopted databases share one history.
    op.create_index("Event_gitlabEventId_key", "Event", ["gitlabEventId"], unique=True)
    op.create_index("Event_userId_createdAt_idx", "Event", ["userId", sa.text('"createdAt" DESC')])
    op.create_index("Event_gitlabEventId_idx", "Event", ["gitlabEventId"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            'CREATE INDEX "events_fts_idx" ON "Event" USING GIN '
            "(to_tsvector('english', title || ' ' || COALESCE(body, '')))"
        )

    op.create_table(
        "LastSync",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("userId", sa.Text(), nullable=False),
        sa.Column("lastSyncAt", TS, nullable=False),
        _created_at(),
        _updated_at(),
        sa.PrimaryKeyConstraint("id", name="LastSync_pkey"),
    )
    op.create_index("LastSync_userId_key", "LastSync", ["userId"], unique=True)
    op.create_index("LastSync_userId_idx", "LastSync", ["userId"])


def downgrade() -> None:
    # Drops the original tables and their data: only meaningful on a database this
    # service created (an adopted one was never built by this revision).
    op.drop_table("LastSync")
    op.execute('DROP INDEX IF EXISTS "events_fts_idx"')
    op.drop_table("Event")
    op.drop_table("MonitoredProject")
    op.drop_table("account")
    op.drop_table("user")
