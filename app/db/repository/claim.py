"""What a user's sync reads and writes around its work, as plain rows (rows.py), never ORM
instances: LastSync, the account's token, the projects and their cursors when it starts, the
idle projects' cursors and LastSync when it ends.

These run for every user of every poll, and a warm user (nothing changed in GitLab) is
little else, so on PostgreSQL each step is one statement sent as driver SQL (no ORM, no
statement compilation): the lock with the freshness check, the reads, the final writes.
They run on the lease's connection outside any transaction (app/sync/lease.py
`autocommit`): one statement is atomic on its own, and BEGIN and COMMIT would be two round
trips more each. On SQLite (and with table leases) the portable statements run inside the
caller's transaction, as before.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    Account,
    LastSync,
    MonitoredProject,
    SyncCursor,
    UTCDateTime,
    naive_utc_ms,
    new_id,
    utcnow,
)
from app.db.repository._base import _dialect
from app.db.repository.accounts import GITLAB_PROVIDER
from app.db.repository.cursors import advance_cursors, upsert_last_sync
from app.db.rows import AccountRow, ClaimRows, CursorMove, CursorRow, LastSyncRow, ProjectRow

Database = AsyncSession | AsyncConnection

_CURSOR_COLUMNS = tuple(f.name for f in dataclasses.fields(CursorRow))
_PROJECT_COLUMNS = ("id", "userId", "gitlabProjectId", "projectName", "projectPath", "createdAt")
_TIME_CURSOR_FIELDS = frozenset(
    c.name for c in SyncCursor.__table__.c if isinstance(c.type, UTCDateTime)
)


def _utc(value: datetime) -> datetime:
    """A stored (naive UTC) time as the service uses it: timezone-aware UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_time(value: str | None) -> datetime | None:
    """A time that travelled inside JSON (PostgreSQL renders timestamps as ISO 8601)."""
    return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)


def _params(value: datetime | None) -> datetime | None:
    """A time as it is stored: naive UTC at millisecond precision (UTCDateTime's rule)."""
    return None if value is None else naive_utc_ms(value)


# --- PostgreSQL: one statement per step ---------------------------------------------------------

# The freshness check and the lock in one round trip: a user synced after `$3` (a manual
# refresh's horizon; NULL otherwise) is left alone, without taking its lock.
_PG_LOCK = (
    'SELECT l."lastSyncAt", l."updatedAt", '
    'CASE WHEN $3::timestamp IS NOT NULL AND l."updatedAt" > $3::timestamp THEN NULL '
    "ELSE pg_try_advisory_lock($2::bigint) END "
    'FROM (SELECT 1) AS one LEFT JOIN "LastSync" l ON l."userId" = $1'
)

_PROJECT_LIST = ", ".join(f'p."{c}"' for c in _PROJECT_COLUMNS)
_CURSOR_LIST = ", ".join(f"c.{c}" for c in _CURSOR_COLUMNS)
# Built from the models' own column names: no outside text in it.
_PG_CLAIM = (
    'SELECT a.id, a."accessToken", a."refreshToken", a."accessTokenExpiresAt", '  # noqa: S608
    f'(SELECT json_agg(json_build_array({_PROJECT_LIST}) ORDER BY p."gitlabProjectId") '
    'FROM "MonitoredProject" p WHERE p."userId" = $1), '
    f"(SELECT json_agg(json_build_array({_CURSOR_LIST})) FROM sync_cursor c "
    "WHERE c.user_id = $1) "
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL (SELECT * FROM account "
    f'WHERE "userId" = $1 AND "providerId" = \'{GITLAB_PROVIDER}\' '
    'ORDER BY "updatedAt" DESC LIMIT 1) a ON true'
)


def _loads(value: Any) -> Any:
    """A json column: already decoded by the driver's codec, or its text."""
    return json.loads(value) if isinstance(value, str) else value


def _cursor_from_json(values: list[Any]) -> CursorRow:
    fields: dict[str, Any] = {
        name: _json_time(v) if name in _TIME_CURSOR_FIELDS else v
        for name, v in zip(_CURSOR_COLUMNS, values, strict=True)
    }
    return CursorRow(**fields)


def _project_from_json(values: list[Any]) -> ProjectRow:
    pid, user_id, gitlab_id, name, path, created = values
    created_at = _json_time(created)
    assert created_at is not None  # NOT NULL
    return ProjectRow(pid, user_id, gitlab_id, name, path, created_at)


async def lock_user(
    conn: AsyncConnection, user_id: str, key: int, fresh_after: datetime | None
) -> tuple[LastSyncRow | None, bool | None]:
    """PostgreSQL, on the connection that will hold the lock: the user's LastSync and the
    session advisory lock on `key` (True taken, False held elsewhere), in one statement.
    None for the lock when LastSync moved after `fresh_after` (a fresh user: not locked)."""
    result = await conn.exec_driver_sql(_PG_LOCK, (user_id, key, _params(fresh_after)))
    last_at, updated_at, locked = tuple(result.one())
    last = None if last_at is None else LastSyncRow(_utc(last_at), _utc(updated_at))
    return last, locked


async def _pg_claim_rows(conn: AsyncConnection, user_id: str) -> ClaimRows:
    row = (await conn.exec_driver_sql(_PG_CLAIM, (user_id,))).one()
    account_id, access, refresh, expires, projects, cursors = tuple(row)
    expires_at = None if expires is None else _utc(expires)
    account = None if account_id is None else AccountRow(account_id, access, refresh, expires_at)
    cursor_rows = [_cursor_from_json(c) for c in _loads(cursors) or ()]
    return ClaimRows(
        account=account,
        projects=[_project_from_json(p) for p in _loads(projects) or ()],
        cursors={c.gitlab_project_id: c for c in cursor_rows},
    )


# --- portable ----------------------------------------------------------------------------------

_USER_ID: sa.BindParameter[str] = sa.bindparam("user_id")
_LAST_SYNC = sa.select(LastSync.lastSyncAt, LastSync.updatedAt).where(LastSync.userId == _USER_ID)
_ACCOUNT = (
    sa.select(Account.id, Account.accessToken, Account.refreshToken, Account.accessTokenExpiresAt)
    .where(Account.userId == _USER_ID, Account.providerId == GITLAB_PROVIDER)
    .order_by(Account.updatedAt.desc())
    .limit(1)
)
_PROJECTS = (
    sa.select(*(MonitoredProject.__table__.c[c] for c in _PROJECT_COLUMNS))
    .where(MonitoredProject.userId == _USER_ID)
    .order_by(MonitoredProject.gitlabProjectId)
)
_CURSORS = sa.select(*(SyncCursor.__table__.c[c] for c in _CURSOR_COLUMNS)).where(
    SyncCursor.user_id == _USER_ID
)


async def get_last_sync(db: Database, user_id: str) -> LastSyncRow | None:
    row = (await db.execute(_LAST_SYNC, {"user_id": user_id})).one_or_none()
    return None if row is None else LastSyncRow(row[0], row[1])


async def list_projects(db: Database, user_id: str) -> list[ProjectRow]:
    return [ProjectRow(*r) for r in (await db.execute(_PROJECTS, {"user_id": user_id})).all()]


async def get_cursors(db: Database, user_id: str) -> dict[str, CursorRow]:
    rows = (await db.execute(_CURSORS, {"user_id": user_id})).all()
    return {r[0]: CursorRow(*r) for r in rows}


async def claim_rows(db: Database, user_id: str) -> ClaimRows:
    """The account's token (the newest GitLab account), the monitored projects (in
    gitlabProjectId order) and their cursors: one statement on PostgreSQL."""
    if _dialect(db) == "postgresql" and isinstance(db, AsyncConnection):
        return await _pg_claim_rows(db, user_id)
    account = (await db.execute(_ACCOUNT, {"user_id": user_id})).one_or_none()
    return ClaimRows(
        account=None if account is None else AccountRow(*account),
        projects=await list_projects(db, user_id),
        cursors=await get_cursors(db, user_id),
    )


# --- the end of a user's sync -------------------------------------------------------------------


def _pg_finish_sql(mark: bool) -> str:
    # advance_cursors' rule (cursors.py) for a JSON list of moves, LastSync's upsert, and
    # sync_user's record of the value: data-modifying CTEs all run, once, to completion.
    mark_cte = (
        ", marked AS (INSERT INTO sync_user (user_id, last_sync_at) VALUES ($1, $4::timestamp) "
        "ON CONFLICT (user_id) DO UPDATE SET last_sync_at = excluded.last_sync_at RETURNING 1)"
        if mark
        else ""
    )
    return (
        "WITH moved AS ("  # noqa: S608 - no outside text in it
        "INSERT INTO sync_cursor (user_id, gitlab_project_id, cursor_at, last_success_at, "
        "last_error, last_error_at, updated_at, access_check_at, access_lost_at, backfill_from, "
        "reconcile_due_at) "
        "SELECT $1, m.p, m.c, $3::timestamp, NULL, NULL, $3::timestamp, NULL, NULL, m.b, m.r "
        "FROM json_to_recordset($2::json) AS m(p text, c timestamp(3), b timestamp(3), "
        "r timestamp(3)) ORDER BY m.p "
        "ON CONFLICT (user_id, gitlab_project_id) DO UPDATE SET "
        "cursor_at = CASE WHEN sync_cursor.cursor_at IS NULL THEN excluded.cursor_at "
        "WHEN sync_cursor.cursor_at < excluded.cursor_at THEN excluded.cursor_at "
        "ELSE sync_cursor.cursor_at END, "
        "last_success_at = excluded.last_success_at, last_error = NULL, last_error_at = NULL, "
        "updated_at = excluded.updated_at, access_check_at = NULL, access_lost_at = NULL, "
        "backfill_from = CASE WHEN sync_cursor.cursor_at IS NULL THEN excluded.backfill_from "
        "ELSE sync_cursor.backfill_from END, "
        "reconcile_due_at = coalesce(sync_cursor.reconcile_due_at, excluded.reconcile_due_at) "
        "RETURNING 1), "
        'synced AS (INSERT INTO "LastSync" (id, "userId", "lastSyncAt", "createdAt", "updatedAt") '
        "VALUES ($5, $1, $4::timestamp, $3::timestamp, $3::timestamp) "
        'ON CONFLICT ("userId") DO UPDATE SET "lastSyncAt" = excluded."lastSyncAt", '
        '"updatedAt" = excluded."updatedAt" RETURNING 1)'
        + mark_cte
        + " SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM synced)"
    )


_PG_FINISH = {mark: _pg_finish_sql(mark) for mark in (False, True)}


def _as_text(value: datetime | None) -> str | None:
    return None if value is None else naive_utc_ms(value).isoformat(timespec="milliseconds")


async def finish_user_sync(
    db: Database,
    user_id: str,
    moves: Mapping[str, CursorMove],
    last_sync_at: datetime,
    *,
    mark: bool = False,
) -> None:
    """The idle projects' cursors (advance_cursors) and the user's LastSync (upsert_last_sync,
    `mark` as there): one statement on PostgreSQL, whose rows are written together."""
    if _dialect(db) == "postgresql" and isinstance(db, AsyncConnection):
        now = utcnow()
        page = [
            {
                "p": pid,
                "c": _as_text(move.cursor_at),
                "b": _as_text(move.backfill_from),
                "r": _as_text(move.reconcile_due_at),
            }
            for pid, move in sorted(moves.items())
        ]
        params = (user_id, json.dumps(page), _params(now), _params(last_sync_at), new_id())
        await db.exec_driver_sql(_PG_FINISH[mark], params)
        return
    await advance_cursors(db, user_id, dict(moves))
    await upsert_last_sync(db, user_id, last_sync_at, mark=mark)


__all__ = [
    "claim_rows",
    "finish_user_sync",
    "get_cursors",
    "get_last_sync",
    "list_projects",
    "lock_user",
]
