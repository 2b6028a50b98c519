"""Poll runs, the sync status of users and projects, and the database ping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    LastSync,
    MonitoredProject,
    PollRun,
    SyncCursor,
    User,
)
from app.db.repository._base import _table

# --- poll runs and status -------------------------------------------------------------------------


async def create_poll_run(
    session: AsyncSession,
    run_id: str,
    trigger: str,
    started_at: datetime,
    *,
    auth_method: str | None = None,
    auth_email: str | None = None,
    shard: tuple[int, int] | None = None,
) -> None:
    """`shard` is (index, count) for a sharded run."""
    session.add(
        PollRun(
            id=run_id,
            trigger=trigger,
            started_at=started_at,
            auth_method=auth_method,
            auth_email=auth_email,
            shard=shard[0] if shard else None,
            shards=shard[1] if shard else None,
        )
    )
    await session.flush()


async def finish_poll_run(
    session: AsyncSession,
    run_id: str,
    *,
    finished_at: datetime,
    success: bool,
    status_code: int,
    total: int,
    processed: int,
    failed: int,
    skipped: int,
    skipped_reasons: dict[str, int],
    events_stored: int,
    events_updated: int,
    error: str | None,
) -> None:
    await session.execute(
        sa.update(PollRun)
        .where(PollRun.id == run_id)
        .values(
            finished_at=finished_at,
            success=success,
            status_code=status_code,
            total=total,
            processed=processed,
            failed=failed,
            skipped=skipped,
            skipped_reasons=skipped_reasons,
            events_stored=events_stored,
            events_updated=events_updated,
            error=error,
        )
    )


async def recent_runs(session: AsyncSession, limit: int = 50) -> list[PollRun]:
    stmt = sa.select(PollRun).order_by(PollRun.started_at.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    trigger: str
    auth_method: str | None
    auth_email: str | None
    started_at: datetime
    finished_at: datetime | None
    success: bool | None
    status_code: int | None
    total: int
    processed: int
    failed: int
    skipped: int
    skipped_reasons: dict[str, int] | None
    events_stored: int
    events_updated: int
    error: str | None


async def list_runs(
    session: AsyncSession, *, limit: int, before: tuple[datetime, str] | None = None
) -> list[RunRecord]:
    """Runs newest first, at most `limit`, strictly older than the `(started_at, id)` key
    `before` (keyset pagination: stable while new runs arrive)."""
    table = _table(PollRun)
    stmt = sa.select(
        table.c.id,
        table.c.trigger,
        table.c.auth_method,
        table.c.auth_email,
        table.c.started_at,
        table.c.finished_at,
        table.c.success,
        table.c.status_code,
        table.c.total,
        table.c.processed,
        table.c.failed,
        table.c.skipped,
        table.c.skipped_reasons,
        table.c.events_stored,
        table.c.events_updated,
        table.c.error,
    )
    if before is not None:
        at, run_id = before
        stmt = stmt.where(
            sa.or_(
                table.c.started_at < at,
                sa.and_(table.c.started_at == at, table.c.id < run_id),
            )
        )
    stmt = stmt.order_by(table.c.started_at.desc(), table.c.id.desc()).limit(limit)
    return [RunRecord(**row._asdict()) for row in (await session.execute(stmt)).all()]


async def last_successful_run_at(session: AsyncSession) -> datetime | None:
    stmt = sa.select(sa.func.max(PollRun.finished_at)).where(PollRun.success.is_(True))
    return (await session.execute(stmt)).scalar_one_or_none()


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    gitlab_project_id: str
    name: str
    path: str
    cursor_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    access_lost_at: datetime | None = None
    access_check_at: datetime | None = None
    reconciled_at: datetime | None = None
    reconcile_due_at: datetime | None = None
    reconcile_held_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class UserStatus:
    user_id: str
    email: str | None
    last_sync_at: datetime | None
    projects: list[ProjectStatus]


async def sync_status(session: AsyncSession, user_id: str | None = None) -> list[UserStatus]:
    users_stmt = sa.select(User.id, User.email).order_by(User.email)
    if user_id is not None:
        users_stmt = users_stmt.where(User.id == user_id)
    users = (await session.execute(users_stmt)).all()
    ids = [u[0] for u in users]
    if not ids:
        return []
    last = dict(
        (
            await session.execute(
                sa.select(LastSync.userId, LastSync.lastSyncAt).where(LastSync.userId.in_(ids))
            )
        ).all()
    )
    rows = (
        await session.execute(
            sa.select(MonitoredProject, SyncCursor)
            .outerjoin(
                SyncCursor,
                sa.and_(
                    SyncCursor.user_id == MonitoredProject.userId,
                    SyncCursor.gitlab_project_id == MonitoredProject.gitlabProjectId,
                ),
            )
            .where(MonitoredProject.userId.in_(ids))
            .order_by(MonitoredProject.projectPath)
        )
    ).all()
    by_user: dict[str, list[ProjectStatus]] = {i: [] for i in ids}
    for project, cursor in rows:
        by_user[project.userId].append(
            ProjectStatus(
                gitlab_project_id=project.gitlabProjectId,
                name=project.projectName,
                path=project.projectPath,
                cursor_at=cursor.cursor_at if cursor else None,
                last_success_at=cursor.last_success_at if cursor else None,
                last_error=cursor.last_error if cursor else None,
                last_error_at=cursor.last_error_at if cursor else None,
                **_access_and_reconcile_status(cursor),
            )
        )
    return [UserStatus(u[0], u[1], last.get(u[0]), by_user[u[0]]) for u in users]


def _access_and_reconcile_status(cursor: SyncCursor | None) -> dict[str, datetime | None]:
    if cursor is None:
        return {}
    return {
        "access_lost_at": cursor.access_lost_at,
        "access_check_at": cursor.access_check_at,
        "reconciled_at": cursor.reconciled_at,
        "reconcile_due_at": cursor.reconcile_due_at,
        "reconcile_held_at": cursor.reconcile_held_at,
    }


async def ping(session: AsyncSession) -> None:
    await session.execute(sa.text("SELECT 1"))


__all__ = [
    "ProjectStatus",
    "RunRecord",
    "UserStatus",
    "create_poll_run",
    "finish_poll_run",
    "last_successful_run_at",
    "list_runs",
    "ping",
    "recent_runs",
    "sync_status",
]
