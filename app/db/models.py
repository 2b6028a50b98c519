"""Typed SQLAlchemy models.

The first five tables are the original app's (reference: seed-schema.md) with identical
names, columns and PostgreSQL types. The others are this service's own, added by later
migrations. The original schema has no database default for `id` or `updatedAt`: the
application supplies both (see `new_id` and `utcnow`).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def new_id() -> str:
    """A random UUID version 4 as 32 hex digits (`uuid.uuid4().hex`), without building a
    UUID object: one per stored row, so it shows on a backfill."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def new_ids(count: int) -> list[str]:
    """`count` ids as `new_id` makes them, from one read of the random source (a page of
    rows at once)."""
    b = bytearray(os.urandom(16 * count))
    b[6::16] = bytes((x & 0x0F) | 0x40 for x in b[6::16])
    b[8::16] = bytes((x & 0x3F) | 0x80 for x in b[8::16])
    text = b.hex()
    return [text[i : i + 32] for i in range(0, 32 * count, 32)]


def utcnow() -> datetime:
    return datetime.now(UTC)


def naive_utc_ms(value: datetime) -> datetime:
    """How a time is stored: naive UTC (a naive value is taken as UTC) truncated to
    milliseconds, TIMESTAMP(3), so SQLite's stored values equal PostgreSQL's."""
    tz = value.tzinfo
    if tz is not None and tz is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None, microsecond=value.microsecond // 1000 * 1000)


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMP(3) without time zone holding UTC, as the original stores it.

    Python side is always timezone-aware UTC; the column stays naive as Prisma made it.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[datetime]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(precision=3))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else naive_utc_ms(value)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# labels: TEXT[] on PostgreSQL, JSON on SQLite (the closest type).
LabelsType = sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql")

CREATED_AT_DEFAULT = sa.text("CURRENT_TIMESTAMP")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    name: Mapped[str | None] = mapped_column(sa.Text)
    email: Mapped[str | None] = mapped_column(sa.Text)
    emailVerified: Mapped[bool | None] = mapped_column(sa.Boolean)  # noqa: N815
    image: Mapped[str | None] = mapped_column(sa.Text)
    createdAt: Mapped[datetime] = mapped_column(  # noqa: N815
        UTCDateTime, nullable=False, server_default=CREATED_AT_DEFAULT
    )
    updatedAt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # noqa: N815

    __table_args__ = (sa.Index("user_email_key", "email", unique=True),)


class Account(Base):
    __tablename__ = "account"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    userId: Mapped[str] = mapped_column(  # noqa: N815
        sa.Text,
        sa.ForeignKey("user.id", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    )
    accountId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    providerId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    accessToken: Mapped[str | None] = mapped_column(sa.Text)  # noqa: N815
    refreshToken: Mapped[str | None] = mapped_column(sa.Text)  # noqa: N815
    idToken: Mapped[str | None] = mapped_column(sa.Text)  # noqa: N815
    accessTokenExpiresAt: Mapped[datetime | None] = mapped_column(UTCDateTime)  # noqa: N815
    refreshTokenExpiresAt: Mapped[datetime | None] = mapped_column(UTCDateTime)  # noqa: N815
    scope: Mapped[str | None] = mapped_column(sa.Text)
    password: Mapped[str | None] = mapped_column(sa.Text)
    createdAt: Mapped[datetime] = mapped_column(  # noqa: N815
        UTCDateTime, nullable=False, server_default=CREATED_AT_DEFAULT
    )
    updatedAt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # noqa: N815

    __table_args__ = (
        sa.Index("account_userId_idx", "userId"),
        sa.Index("account_providerId_accountId_key", "providerId", "accountId", unique=True),
    )


class MonitoredProject(Base):
    __tablename__ = "MonitoredProject"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    userId: Mapped[str] = mapped_column(  # noqa: N815
        sa.Text,
        sa.ForeignKey("user.id", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    )
    gitlabProjectId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    projectName: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    projectPath: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    createdAt: Mapped[datetime] = mapped_column(  # noqa: N815
        UTCDateTime, nullable=False, server_default=CREATED_AT_DEFAULT
    )

    __table_args__ = (
        sa.Index("MonitoredProject_userId_idx", "userId"),
        sa.Index(
            "MonitoredProject_userId_gitlabProjectId_key",
            "userId",
            "gitlabProjectId",
            unique=True,
        ),
    )


class Event(Base):
    __tablename__ = "Event"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    userId: Mapped[str] = mapped_column(  # noqa: N815
        sa.Text,
        sa.ForeignKey("user.id", ondelete="CASCADE", onupdate="CASCADE"),
        nullable=False,
    )
    type: Mapped[str] = mapped_column(sa.Text, nullable=False)
    title: Mapped[str] = mapped_column(sa.Text, nullable=False)
    body: Mapped[str | None] = mapped_column(sa.Text)
    author: Mapped[str] = mapped_column(sa.Text, nullable=False)
    authorAvatar: Mapped[str | None] = mapped_column(sa.Text)  # noqa: N815
    project: Mapped[str] = mapped_column(sa.Text, nullable=False)
    projectId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    labels: Mapped[list[str] | None] = mapped_column(LabelsType)
    gitlabEventId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    gitlabUrl: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    createdAt: Mapped[datetime] = mapped_column(  # noqa: N815
        UTCDateTime, nullable=False, server_default=CREATED_AT_DEFAULT
    )
    updatedAt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # noqa: N815

    __table_args__ = (
        # The original's unique index on gitlabEventId alone dropped the second user's
        # events when two users monitor one project; ours is per user.
        sa.Index("Event_userId_gitlabEventId_key", "userId", "gitlabEventId", unique=True),
        sa.Index("Event_userId_createdAt_idx", "userId", sa.text('"createdAt" DESC')),
        sa.Index("Event_gitlabEventId_idx", "gitlabEventId"),
    )


class LastSync(Base):
    __tablename__ = "LastSync"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    userId: Mapped[str] = mapped_column(sa.Text, nullable=False)  # noqa: N815
    lastSyncAt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # noqa: N815
    createdAt: Mapped[datetime] = mapped_column(  # noqa: N815
        UTCDateTime, nullable=False, server_default=CREATED_AT_DEFAULT
    )
    updatedAt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)  # noqa: N815

    __table_args__ = (
        sa.Index("LastSync_userId_key", "userId", unique=True),
        sa.Index("LastSync_userId_idx", "userId"),
    )


# --- this service's own tables ---------------------------------------------------------


class SyncCursor(Base):
    """Per (user, project) watermark: everything updated before `cursor_at` is stored."""

    __tablename__ = "sync_cursor"

    user_id: Mapped[str] = mapped_column(
        sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    gitlab_project_id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    cursor_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # --- access loss and reconciliation (migration 0004) ---------------------------------
    # Where the project's stored history begins: the `updated_after` of its first sync, or
    # ALL_HISTORY. NULL with a cursor: synced before 0004 (unknown), so reconciliation lists
    # everything and only removes.
    backfill_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # First run that found the project refused while the token worked (a pending loss).
    access_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Access loss confirmed and the user's events of the project removed; cleared by the
    # backfill that follows when access returns.
    access_lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconcile_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reconciled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A mass removal waiting for the next reconciliation to find the same (fingerprint).
    reconcile_held: Mapped[str | None] = mapped_column(sa.Text)
    reconcile_held_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SyncLease(Base):
    """At most one run syncs a user at once; a lease not renewed before expires_at is dead."""

    __tablename__ = "sync_lease"

    user_id: Mapped[str] = mapped_column(
        sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(sa.Text, nullable=False)
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class SyncUser(Base):
    """Per user: the LastSync value this service last wrote, and the last one written by
    someone else (the original app's Refresh) that was followed (migration 0006)."""

    __tablename__ = "sync_user"

    user_id: Mapped[str] = mapped_column(
        sa.Text, sa.ForeignKey("user.id", ondelete="CASCADE"), primary_key=True
    )
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    app_refresh_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PollRun(Base):
    """One record per poll run (who triggered it, when, what it achieved)."""

    __tablename__ = "poll_run"

    id: Mapped[str] = mapped_column(sa.Text, primary_key=True)
    trigger: Mapped[str] = mapped_column(sa.Text, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    success: Mapped[bool | None] = mapped_column(sa.Boolean)
    status_code: Mapped[int | None] = mapped_column(sa.Integer)
    total: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    processed: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    skipped: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    events_stored: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    events_updated: Mapped[int] = mapped_column(sa.Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(sa.Text)
    # How the /api/poll caller authenticated (inngest_signature, bearer, oidc, unsigned) and,
    # for OIDC, the service account's e-mail; NULL for runs started in-process (migration 0003).
    auth_method: Mapped[str | None] = mapped_column(sa.Text)
    auth_email: Mapped[str | None] = mapped_column(sa.Text)
    # A sharded run's shard and shard count (`{"shard": 0, "shards": 4}`); NULL otherwise
    # (migration 0005).
    shard: Mapped[int | None] = mapped_column(sa.Integer)
    shards: Mapped[int | None] = mapped_column(sa.Integer)
    # Users skipped per reason (`{"fresh": 1}`), as /api/poll answers it; NULL before
    # migration 0008.
    skipped_reasons: Mapped[dict[str, int] | None] = mapped_column(sa.JSON)

    __table_args__ = (sa.Index("poll_run_started_at_idx", "started_at"),)
