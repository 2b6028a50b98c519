"""Per-project cursors (with the access and reconciliation marks) and LastSync."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    LastSync,
    SyncCursor,
    SyncUser,
    User,
    new_id,
    utcnow,
)
from app.db.repository._base import Upsert, _cached, _insert, _table
from app.db.rows import CursorMove

# --- cursors and LastSync ---------------------------------------------------------------------


def _build_advance_cursor(ins: Upsert, table: sa.Table) -> sa.Insert:
    # On the table, not the ORM entity: the entity took the ORM bulk-insert path per call.
    excluded = ins.excluded
    c = table.c
    return ins.on_conflict_do_update(
        index_elements=[c.user_id, c.gitlab_project_id],
        set_={
            # Never move backwards: a slow, older run must not undo a newer one.
            "cursor_at": sa.case(
                (c.cursor_at.is_(None), excluded.cursor_at),
                (c.cursor_at < excluded.cursor_at, excluded.cursor_at),
                else_=c.cursor_at,
            ),
            "last_success_at": excluded.last_success_at,
            "last_error": None,
            "last_error_at": None,
            "updated_at": excluded.updated_at,
            # A project that syncs is readable: no pending or confirmed access loss.
            "access_check_at": None,
            "access_lost_at": None,
            # Recorded by the first successful sync only: where the stored history begins.
            "backfill_from": sa.case(
                (c.cursor_at.is_(None), excluded.backfill_from), else_=c.backfill_from
            ),
            "reconcile_due_at": sa.func.coalesce(c.reconcile_due_at, excluded.reconcile_due_at),
        },
    )


async def advance_cursor(
    session: AsyncSession,
    user_id: str,
    gitlab_project_id: str,
    cursor_at: datetime,
    *,
    backfill_from: datetime | None = None,
    reconcile_due_at: datetime | None = None,
) -> None:
    """Move the cursor forward (never back). `backfill_from` is kept only when this is the
    project's first successful sync; `reconcile_due_at` only when none is scheduled."""
    move = CursorMove(cursor_at, backfill_from, reconcile_due_at)
    await advance_cursors(session, user_id, {gitlab_project_id: move})


async def advance_cursors(
    session: AsyncSession | AsyncConnection, user_id: str, moves: dict[str, CursorMove]
) -> None:
    """Several projects' cursors in one statement (the idle projects of one user)."""
    if not moves:
        return
    now = utcnow()
    params = [
        {
            "user_id": user_id,
            "gitlab_project_id": pid,
            "cursor_at": move.cursor_at,
            "last_success_at": now,
            "last_error": None,
            "last_error_at": None,
            "updated_at": now,
            "access_check_at": None,
            "access_lost_at": None,
            "backfill_from": move.backfill_from,
            "reconcile_due_at": move.reconcile_due_at,
        }
        for pid, move in sorted(moves.items())  # a stable order: no lock-order surprises
    ]
    stmt = _cached(session, "advance_cursor", _table(SyncCursor), _build_advance_cursor)
    await session.execute(stmt, params[0] if len(params) == 1 else params)


async def record_project_error(
    session: AsyncSession, user_id: str, gitlab_project_id: str, error: str
) -> None:
    now = utcnow()
    stmt = _insert(session, SyncCursor).values(
        user_id=user_id,
        gitlab_project_id=gitlab_project_id,
        cursor_at=None,
        last_error=error[:500],
        last_error_at=now,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[SyncCursor.user_id, SyncCursor.gitlab_project_id],
        set_={
            "last_error": stmt.excluded.last_error,
            "last_error_at": stmt.excluded.last_error_at,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    await session.execute(stmt)


async def _upsert_cursor_columns(
    session: AsyncSession, user_id: str, gitlab_project_id: str, **values: Any
) -> None:
    """Set some sync_cursor columns, creating the row (without a cursor) if needed."""
    now = utcnow()
    stmt = _insert(session, SyncCursor).values(
        user_id=user_id, gitlab_project_id=gitlab_project_id, updated_at=now, **values
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[SyncCursor.user_id, SyncCursor.gitlab_project_id],
        set_={name: stmt.excluded[name] for name in [*values, "updated_at"]},
    )
    await session.execute(stmt)


async def record_access_check(
    session: AsyncSession, user_id: str, gitlab_project_id: str, at: datetime | None
) -> None:
    """The first run that found the project refused (None: the refusal did not hold)."""
    await _upsert_cursor_columns(session, user_id, gitlab_project_id, access_check_at=at)


async def mark_access_lost(
    session: AsyncSession, user_id: str, gitlab_project_id: str, at: datetime
) -> None:
    """Access loss confirmed: no cursor (the project is backfilled when access returns), no
    window, no reconciliation until then."""
    await _upsert_cursor_columns(
        session,
        user_id,
        gitlab_project_id,
        cursor_at=None,
        access_check_at=None,
        access_lost_at=at,
        backfill_from=None,
        reconcile_due_at=None,
        reconcile_held=None,
        reconcile_held_at=None,
    )


async def _update_cursor_row(
    session: AsyncSession, user_id: str, gitlab_project_id: str, **values: Any
) -> None:
    await session.execute(
        sa.update(SyncCursor)
        .where(SyncCursor.user_id == user_id, SyncCursor.gitlab_project_id == gitlab_project_id)
        .values(**values, updated_at=utcnow())
    )


async def schedule_reconciliation(
    session: AsyncSession, user_id: str, gitlab_project_id: str, due_at: datetime
) -> None:
    await _update_cursor_row(session, user_id, gitlab_project_id, reconcile_due_at=due_at)


async def record_reconciliation(
    session: AsyncSession,
    user_id: str,
    gitlab_project_id: str,
    *,
    reconciled_at: datetime,
    due_at: datetime,
    held: str | None,
) -> None:
    """A completed reconciliation: when, the next one, and the removal it holds (if any).
    Never touches the cursor."""
    await _update_cursor_row(
        session,
        user_id,
        gitlab_project_id,
        reconciled_at=reconciled_at,
        reconcile_due_at=due_at,
        reconcile_held=held,
        reconcile_held_at=reconciled_at if held is not None else None,
    )


def _build_upsert_last_sync(ins: Upsert, table: sa.Table) -> sa.Insert:
    return ins.on_conflict_do_update(
        index_elements=[table.c.userId],
        set_={"lastSyncAt": ins.excluded.lastSyncAt, "updatedAt": ins.excluded.updatedAt},
    )


async def upsert_last_sync(
    session: AsyncSession | AsyncConnection,
    user_id: str,
    last_sync_at: datetime,
    *,
    mark: bool = False,
) -> None:
    """Move the user's LastSync. `mark`: also record the value in sync_user, so a LastSync
    holding anything else is known to come from someone else (`claim_app_refreshes`)."""
    now = utcnow()
    await session.execute(
        _cached(session, "upsert_last_sync", _table(LastSync), _build_upsert_last_sync),
        {
            "id": new_id(),
            "userId": user_id,
            "lastSyncAt": last_sync_at,
            "createdAt": now,
            "updatedAt": now,
        },
    )
    if mark:
        await session.execute(
            _cached(session, "mark_last_sync", _table(SyncUser), _build_mark_last_sync),
            {"user_id": user_id, "last_sync_at": last_sync_at},
        )


def _build_mark_last_sync(ins: Upsert, table: sa.Table) -> sa.Insert:
    return ins.on_conflict_do_update(
        index_elements=[table.c.user_id], set_={"last_sync_at": ins.excluded.last_sync_at}
    )


def _build_claim_app_refresh(ins: Upsert, table: sa.Table) -> sa.Insert:
    seen = ins.excluded.app_refresh_seen_at
    return ins.on_conflict_do_update(
        index_elements=[table.c.user_id],
        set_={"app_refresh_seen_at": seen},
        where=table.c.app_refresh_seen_at.is_distinct_from(seen),
    ).returning(table.c.user_id)


async def claim_app_refreshes(session: AsyncSession, since: datetime) -> list[str]:
    """Users whose LastSync was moved at or after `since` by someone else than this service
    (a value it did not write): each claimed once, by one process, and returned.

    The claim records the LastSync value in sync_user.app_refresh_seen_at in a conditional
    upsert: of two processes claiming the same value, only one changes the row.
    """
    su = _table(SyncUser)
    stmt = (
        sa.select(LastSync.userId, LastSync.lastSyncAt)
        .join(User, User.id == LastSync.userId)
        .outerjoin(su, su.c.user_id == LastSync.userId)
        .where(
            LastSync.updatedAt >= since,
            LastSync.lastSyncAt.is_distinct_from(su.c.last_sync_at),
            LastSync.lastSyncAt.is_distinct_from(su.c.app_refresh_seen_at),
        )
        .order_by(LastSync.userId)
    )
    claimed = []
    claim = _cached(session, "claim_app_refresh", su, _build_claim_app_refresh)
    for user_id, at in (await session.execute(stmt)).all():
        row = await session.execute(claim, {"user_id": user_id, "app_refresh_seen_at": at})
        if row.scalar_one_or_none() is not None:
            claimed.append(user_id)
    return claimed


__all__ = [
    "claim_app_refreshes",
    "advance_cursor",
    "advance_cursors",
    "mark_access_lost",
    "record_access_check",
    "record_project_error",
    "record_reconciliation",
    "schedule_reconciliation",
    "upsert_last_sync",
]
