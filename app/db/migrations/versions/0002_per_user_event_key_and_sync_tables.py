"""per-user event key and sync tables

Fixes the original's defect: "Event_gitlabEventId_key" was unique on gitlabEventId alone,
so when two users monitored one project the second user's events were dropped. The new
key is per user. Existing rows can never violate it (the old key was stricter), so this
is safe on an adopted database. Also adds this service's own tables.

Revision ID: 0002
Revises: 0001
Create Date: 2024-01-02 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")


def _drop_old_event_key() -> None:
    bind = op.get_bind()
    insp = sa.inspect(bind)
    # Prisma makes unique indexes, but tolerate a hand-made unique constraint of that name.
    if any(uc["name"] == "Event_gitlabEventId_key" for uc in insp.get_unique_constraints("Event")):
        if bind.dialect.name == "sqlite":
            with op.batch_alter_table("Event") as batch:
                batch.drop_constraint("Event_gitlabEventId_key", type_="unique")
        else:
            op.drop_constraint("Event_gitlabEventId_key", "Event", type_="unique")
    elif any(ix["name"] == "Event_gitlabEventId_key" for ix in insp.get_indexes("Event")):
        op.drop_index("Event_gitlabEventId_key", table_name="Event")


def upgrade() -> None:
    # Create the new key first so there is never a moment without a uniqueness guard.
    op.create_index(
        "Event_userId_gitlabEventId_key", "Event", ["userId", "gitlabEventId"], unique=True
    )
    _drop_old_event_key()

    op.create_table(
        "sync_cursor",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("gitlab_project_id", sa.Text(), nullable=False),
        sa.Column("cursor_at", TS, nullable=True),
        sa.Column("last_success_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name="sync_cursor_user_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "gitlab_project_id", name="sync_cursor_pkey"),
    )

    op.create_table(
        "sync_lease",
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["user.id"], name="sync_lease_user_id_fkey", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name="sync_lease_pkey"),
    )

    op.create_table(
        "poll_run",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("events_stored", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("events_updated", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="poll_run_pkey"),
    )
    op.create_index("poll_run_started_at_idx", "poll_run", ["started_at"])


def downgrade() -> None:
    op.drop_index("poll_run_started_at_idx", table_name="poll_run")
    op.drop_table("poll_run")
    op.drop_table("sync_lease")
    op.drop_table("sync_cursor")
    # Fails (and rolls back on PostgreSQL) if two users now hold the same gitlabEventId:
    # the original's stricter key cannot be restored without deleting someone's events.
    op.create_index("Event_gitlabEventId_key", "Event", ["gitlabEventId"], unique=True)
    op.drop_index("Event_userId_gitlabEventId_key", table_name="Event")
