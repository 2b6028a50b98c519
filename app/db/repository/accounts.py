"""Users, their GitLab accounts and tokens, and their monitored projects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Account,
    LastSync,
    MonitoredProject,
    SyncCursor,
    User,
    new_id,
    utcnow,
)
from app.db.repository._base import _dialect

GITLAB_PROVIDER = "gitlab"

# --- users, accounts, projects ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserToPoll:
    id: str
    email: str | None
    project_count: int


async def users_to_poll(session: AsyncSession) -> list[UserToPoll]:
    """Every user with at least one monitored project, in a stable order."""
    count = sa.func.count(MonitoredProject.id)
    stmt = (
        sa.select(User.id, User.email, count)
        .join(MonitoredProject, MonitoredProject.userId == User.id)
        .group_by(User.id, User.email)
        .having(count > 0)
        .order_by(User.id)
    )
    return [UserToPoll(r[0], r[1], r[2]) for r in (await session.execute(stmt)).all()]


async def users_by_ids(session: AsyncSession, user_ids: Sequence[str]) -> dict[str, UserToPoll]:
    count = sa.func.count(MonitoredProject.id)
    stmt = (
        sa.select(User.id, User.email, count)
        .outerjoin(MonitoredProject, MonitoredProject.userId == User.id)
        .where(User.id.in_(list(user_ids)))
        .group_by(User.id, User.email)
    )
    return {r[0]: UserToPoll(r[0], r[1], r[2]) for r in (await session.execute(stmt)).all()}


async def users_without_token(session: AsyncSession, user_ids: Sequence[str]) -> set[str]:
    """The users among `user_ids` a sync would skip as `no_token`: no GitLab account, or an
    empty access token on the account `get_gitlab_account` picks (the newest)."""
    ids = list(dict.fromkeys(user_ids))
    has_token: dict[str, bool] = {}
    token_length = sa.func.coalesce(sa.func.length(Account.accessToken), 0)
    for start in range(0, len(ids), 500):  # bounded IN lists
        stmt = (
            sa.select(Account.userId, token_length)
            .where(Account.userId.in_(ids[start : start + 500]))
            .where(Account.providerId == GITLAB_PROVIDER)
            .order_by(Account.userId, Account.updatedAt.desc())
        )
        for user_id, length in (await session.execute(stmt)).all():
            has_token.setdefault(user_id, length > 0)  # the first row is the newest account
    return {uid for uid in ids if not has_token.get(uid, False)}


def email_key(email: str) -> str:
    """How e-mails are compared and stored by this service: trimmed and lower-cased."""
    return email.strip().lower()


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with this e-mail, compared case-insensitively.

    Rows written by the original app may keep mixed case (and, its unique index being
    case-sensitive, even two spellings of one address): the exact spelling wins, then the
    first in e-mail order, so the answer is always the same.
    """
    stmt = (
        sa.select(User)
        .where(sa.func.lower(User.email) == email_key(email))
        .order_by(sa.case((User.email == email.strip(), 0), else_=1), User.email)
        .limit(1)
    )
    return (await session.execute(stmt)).scalars().first()


async def get_user(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def user_of_gitlab_account(session: AsyncSession, gitlab_user_id: str) -> User | None:
    """The user already linked to this GitLab account (its accountId is unique per provider)."""
    stmt = (
        sa.select(User)
        .join(Account, Account.userId == User.id)
        .where(Account.providerId == GITLAB_PROVIDER, Account.accountId == gitlab_user_id)
        .limit(1)
    )
    return (await session.execute(stmt)).scalars().first()


async def create_user_with_account(
    session: AsyncSession,
    *,
    email: str,
    name: str | None,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime | None,
    gitlab_user_id: str | None = None,
) -> User:
    now = utcnow()
    user = User(id=new_id(), email=email, name=name, createdAt=now, updatedAt=now)
    session.add(user)
    await session.flush()
    session.add(
        Account(
            id=new_id(),
            userId=user.id,
            # The GitLab user id when known (unique per provider); else a stable local stand-in.
            accountId=gitlab_user_id or f"local-{user.id}",
            providerId=GITLAB_PROVIDER,
            accessToken=access_token,
            refreshToken=refresh_token,
            accessTokenExpiresAt=expires_at,
            createdAt=now,
            updatedAt=now,
        )
    )
    await session.flush()
    return user


@dataclass(frozen=True, slots=True)
class UserListing:
    id: str
    email: str | None
    name: str | None
    has_token: bool
    token_expires_at: datetime | None
    project_count: int
    last_sync_at: datetime | None


async def list_users(session: AsyncSession) -> list[UserListing]:
    projects = (
        sa.select(sa.func.count(MonitoredProject.id))
        .where(MonitoredProject.userId == User.id)
        .scalar_subquery()
    )
    stmt = (
        sa.select(
            User.id,
            User.email,
            User.name,
            Account.accessToken.is_not(None),
            Account.accessTokenExpiresAt,
            projects,
            LastSync.lastSyncAt,
        )
        .outerjoin(
            Account, sa.and_(Account.userId == User.id, Account.providerId == GITLAB_PROVIDER)
        )
        .outerjoin(LastSync, LastSync.userId == User.id)
        .order_by(User.email)
    )
    rows = (await session.execute(stmt)).all()
    return [UserListing(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]


async def delete_user(session: AsyncSession, user_id: str) -> None:
    # LastSync has no foreign key in the original schema: remove it explicitly.
    await session.execute(sa.delete(LastSync).where(LastSync.userId == user_id))
    await session.execute(sa.delete(User).where(User.id == user_id))


# The per-user reads of every poll, built once and executed with {"user_id": ...}: building
# a statement (its column comparisons and cache key) cost more CPU than running it.
_USER_ID: sa.BindParameter[str] = sa.bindparam("user_id")
_ACCOUNT = (
    sa.select(Account)
    .where(Account.userId == _USER_ID, Account.providerId == GITLAB_PROVIDER)
    .order_by(Account.updatedAt.desc())
    .limit(1)
)
_ACCOUNT_FOR_UPDATE = _ACCOUNT.with_for_update()


async def get_gitlab_account(
    session: AsyncSession, user_id: str, *, for_update: bool = False
) -> Account | None:
    locked = for_update and _dialect(session) == "postgresql"
    stmt = _ACCOUNT_FOR_UPDATE if locked else _ACCOUNT
    return (await session.execute(stmt, {"user_id": user_id})).scalar_one_or_none()


async def store_rotated_tokens(
    session: AsyncSession,
    *,
    account_id: str,
    expected_refresh_token: str | None,
    access_token: str,
    refresh_token: str | None,
    expires_at: datetime | None,
) -> bool:
    """Replace the token pair only if nobody else rotated it meanwhile (compare-and-swap)."""
    stmt = (
        sa.update(Account)
        .where(Account.id == account_id)
        .where(
            Account.refreshToken.is_(None)
            if expected_refresh_token is None
            else Account.refreshToken == expected_refresh_token
        )
        .values(
            accessToken=access_token,
            refreshToken=refresh_token if refresh_token is not None else Account.refreshToken,
            accessTokenExpiresAt=expires_at,
            updatedAt=utcnow(),
        )
    )
    result = cast(CursorResult[Any], await session.execute(stmt))
    return result.rowcount == 1


async def list_all_projects(session: AsyncSession) -> list[tuple[str | None, MonitoredProject]]:
    stmt = (
        sa.select(User.email, MonitoredProject)
        .join(User, User.id == MonitoredProject.userId)
        .order_by(User.email, MonitoredProject.projectPath)
    )
    return [(r[0], r[1]) for r in (await session.execute(stmt)).all()]


async def add_project(
    session: AsyncSession, *, user_id: str, gitlab_project_id: str, name: str, path: str
) -> MonitoredProject:
    project = MonitoredProject(
        id=new_id(),
        userId=user_id,
        gitlabProjectId=gitlab_project_id,
        projectName=name,
        projectPath=path,
        createdAt=utcnow(),
    )
    session.add(project)
    await session.flush()
    return project


async def find_project(
    session: AsyncSession, user_id: str, id_or_path: str
) -> MonitoredProject | None:
    stmt = sa.select(MonitoredProject).where(
        MonitoredProject.userId == user_id,
        sa.or_(
            MonitoredProject.gitlabProjectId == id_or_path,
            MonitoredProject.projectPath == id_or_path,
        ),
    )
    return (await session.execute(stmt)).scalars().first()


async def delete_project(session: AsyncSession, project: MonitoredProject) -> None:
    await session.execute(
        sa.delete(SyncCursor).where(
            SyncCursor.user_id == project.userId,
            SyncCursor.gitlab_project_id == project.gitlabProjectId,
        )
    )
    await session.delete(project)


__all__ = [
    "GITLAB_PROVIDER",
    "UserListing",
    "UserToPoll",
    "add_project",
    "create_user_with_account",
    "delete_project",
    "delete_user",
    "email_key",
    "find_project",
    "get_gitlab_account",
    "get_user",
    "get_user_by_email",
    "list_all_projects",
    "list_users",
    "store_rotated_tokens",
    "users_by_ids",
    "users_to_poll",
    "user_of_gitlab_account",
    "users_without_token",
]
