"""Every SQL statement of the service lives here; callers pass an AsyncSession.

Portable across PostgreSQL and SQLite: upserts use each dialect's ON CONFLICT, chosen once
per call from the session's dialect; batches are one statement per page, never per row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    Account,
    Event,
    LastSync,
    MonitoredProject,
    PollRun,
    SyncCursor,
    SyncLease,
    User,
    UTCDateTime,
    naive_utc_ms,
    new_id,
    utcnow,
)
from app.db.rows import CursorMove, EventRow

GITLAB_PROVIDER = "gitlab"

# Columns whose change makes a stored event stale (the original's FR3: keep data fresh).
_TRACKED_COLUMNS = (
    "title",
    "body",
    "labels",
    "authorAvatar",
    "gitlabUrl",
    "author",
    "project",
    "projectId",
)


# Both dialects' INSERT ... ON CONFLICT statements (the same API: excluded, on_conflict_*).
Upsert = postgresql.Insert | sqlite.Insert


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _table(model: Any) -> sa.Table:
    """A model's table (typed as a Table: declarative models expose a generic FromClause)."""
    return cast(sa.Table, model.__table__)


def _insert(session: AsyncSession, table: sa.Table | type[Any]) -> Upsert:
    name = _dialect(session)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name}")


_TABLES: dict[str, sa.Table] = {
    "advance_cursor": _table(SyncCursor),
    "upsert_last_sync": _table(LastSync),
    "try_acquire_lease": _table(SyncLease),
}
_STATEMENTS: dict[tuple[str, str], sa.Insert] = {}


def _cached(
    session: AsyncSession, name: str, build: Callable[[Upsert, sa.Table], sa.Insert]
) -> sa.Insert:
    """An upsert built once per dialect, without values, executed with a parameter dict:
    SQLAlchemy then reuses its compiled form instead of rebuilding and re-keying it."""
    key = (name, _dialect(session))
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        table = _TABLES[name]
        stmt = _STATEMENTS[key] = build(_insert(session, table), table)
    return stmt


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
_PROJECTS = (
    sa.select(MonitoredProject)
    .where(MonitoredProject.userId == _USER_ID)
    .order_by(MonitoredProject.gitlabProjectId)
)
_CURSORS = sa.select(SyncCursor).where(SyncCursor.user_id == _USER_ID)
_LAST_SYNC = sa.select(LastSync).where(LastSync.userId == _USER_ID)


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


async def list_projects(session: AsyncSession, user_id: str) -> list[MonitoredProject]:
    return list((await session.execute(_PROJECTS, {"user_id": user_id})).scalars())


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


# --- events -------------------------------------------------------------------------------


@dataclass(slots=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0

    def __iadd__(self, other: UpsertCounts) -> UpsertCounts:
        self.inserted += other.inserted
        self.updated += other.updated
        return self


_UPSERT_EVENTS: dict[str, sa.Insert] = {}


def _upsert_events_stmt(session: AsyncSession) -> sa.Insert:
    """The events upsert, built once per dialect and executed with a list of rows.

    Built without values, so SQLAlchemy compiles it once and caches it; a list of parameter
    sets runs as batched multi-row INSERT ... RETURNING ("insertmanyvalues"). Building it
    per call with .values(rows) re-created the EXCLUDED alias and recompiled the statement
    for every page: half of the service's CPU time.
    """
    name = _dialect(session)
    stmt = _UPSERT_EVENTS.get(name)
    if stmt is None:
        table = _table(Event)
        ins = _insert(session, table)
        excluded = ins.excluded
        changed = sa.or_(*(table.c[c].is_distinct_from(excluded[c]) for c in _TRACKED_COLUMNS))
        stmt = ins.on_conflict_do_update(
            index_elements=[table.c.userId, table.c.gitlabEventId],
            set_={
                **{c: excluded[c] for c in _TRACKED_COLUMNS},
                "createdAt": excluded.createdAt,
                "type": excluded.type,
                "updatedAt": excluded.updatedAt,
            },
            where=changed,
        ).returning(table.c.id)
        _UPSERT_EVENTS[name] = stmt
    return stmt


# The labels' JSON array back to TEXT[], in their order.
_LABELS_ARRAY = (
    "ARRAY(SELECT l.v FROM json_array_elements_text(r.labels) WITH ORDINALITY AS l(v, n)"
    " ORDER BY l.n)"
)


def _pg_upsert_events_sql() -> sa.TextClause:
    """PostgreSQL: the whole page as one JSON parameter, unpacked by json_to_recordset.

    Same ON CONFLICT as the portable statement, but SQLAlchemy and asyncpg handle one
    parameter instead of 14 per row: per-row parameter processing was about a quarter of
    the service's CPU on a backfill. Times travel as naive UTC text at millisecond
    precision (TIMESTAMP(3), truncated like UTCDateTime), never through a session time zone.
    """
    cols = [c.name for c in _table(Event).c if c.name not in ("userId", "updatedAt")]
    types = {"labels": "json", "createdAt": "timestamp(3)"}
    record = ", ".join(f'"{c}" {types.get(c, "text")}' for c in cols)
    picked = ", ".join(_LABELS_ARRAY if c == "labels" else f'r."{c}"' for c in cols)
    names = ", ".join(f'"{c}"' for c in cols)
    changed = " OR ".join(
        f'"Event"."{c}" IS DISTINCT FROM excluded."{c}"' for c in _TRACKED_COLUMNS
    )
    updated = ", ".join(
        f'"{c}" = excluded."{c}"' for c in (*_TRACKED_COLUMNS, "createdAt", "type", "updatedAt")
    )
    # Built from the model's own column names, once at import: no outside text in it.
    sql = (
        f'INSERT INTO "Event" ({names}, "userId", "updatedAt") '  # noqa: S608
        f"SELECT {picked}, :user_id, :now "
        f"FROM json_to_recordset(CAST(:rows AS json)) AS r({record}) "
        f'ON CONFLICT ("userId", "gitlabEventId") DO UPDATE SET {updated} WHERE {changed} '
        "RETURNING id"
    )
    return sa.text(sql).bindparams(
        sa.bindparam("user_id", type_=sa.Text),
        sa.bindparam("now", type_=UTCDateTime()),
        sa.bindparam("rows", type_=sa.Text),
    )


_PG_UPSERT_EVENTS = _pg_upsert_events_sql()


def _as_text(stored: datetime) -> str:
    return stored.isoformat(timespec="milliseconds")


async def upsert_events(
    session: AsyncSession, user_id: str, rows: Sequence[EventRow]
) -> UpsertCounts:
    """Insert new events, update changed ones, leave unchanged rows alone: one statement.

    Every row gets a fresh id; RETURNING gives back the id now in the table, so a returned
    id equal to ours was inserted and any other was updated. Unchanged rows return nothing.
    """
    if not rows:
        return UpsertCounts()
    # One row per key: a page never holds duplicates, but ON CONFLICT would fail on them.
    unique = {r["gitlabEventId"]: r for r in rows}
    now = utcnow()
    if _dialect(session) == "postgresql":
        values = [
            {**r, "id": new_id(), "createdAt": _as_text(naive_utc_ms(r["createdAt"]))}
            for r in unique.values()
        ]
        params = {"user_id": user_id, "now": now, "rows": json.dumps(values, ensure_ascii=False)}
        result = await session.execute(_PG_UPSERT_EVENTS, params)
    else:
        values = [
            {**r, "id": new_id(), "userId": user_id, "updatedAt": now} for r in unique.values()
        ]
        result = await session.execute(_upsert_events_stmt(session), values)
    ours = {v["id"] for v in values}
    returned = result.scalars().all()
    inserted = sum(1 for i in returned if i in ours)
    return UpsertCounts(inserted=inserted, updated=len(returned) - inserted)


async def count_events(session: AsyncSession, user_id: str | None = None) -> int:
    stmt = sa.select(sa.func.count(Event.id))
    if user_id:
        stmt = stmt.where(Event.userId == user_id)
    return (await session.execute(stmt)).scalar_one()


# --- cursors and LastSync ---------------------------------------------------------------------


async def get_cursors(session: AsyncSession, user_id: str) -> dict[str, SyncCursor]:
    rows = (await session.execute(_CURSORS, {"user_id": user_id})).scalars()
    return {c.gitlab_project_id: c for c in rows}


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
    session: AsyncSession, user_id: str, moves: dict[str, CursorMove]
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
    stmt = _cached(session, "advance_cursor", _build_advance_cursor)
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


# --- access loss and reconciliation (README: "Access and deletions") -----------------------

# Ids per DELETE statement: far below every driver's parameter limit.
_DELETE_BATCH = 500


async def project_events(
    session: AsyncSession, user_id: str, event_project_id: str
) -> list[tuple[str, str, str]]:
    """(gitlabEventId, type, gitlabUrl) of a user's events of one project ("Event"."projectId"
    holds the project's path, as the original stores it)."""
    stmt = sa.select(Event.gitlabEventId, Event.type, Event.gitlabUrl).where(
        Event.userId == user_id, Event.projectId == event_project_id
    )
    return [(r[0], r[1], r[2]) for r in (await session.execute(stmt)).all()]


async def delete_events(session: AsyncSession, user_id: str, event_ids: Sequence[str]) -> int:
    """Remove these events of the user; returns how many rows went."""
    removed = 0
    ids = list(event_ids)
    for i in range(0, len(ids), _DELETE_BATCH):
        stmt = sa.delete(Event).where(
            Event.userId == user_id, Event.gitlabEventId.in_(ids[i : i + _DELETE_BATCH])
        )
        removed += cast(CursorResult[Any], await session.execute(stmt)).rowcount
    return removed


async def delete_project_events(session: AsyncSession, user_id: str, event_project_id: str) -> int:
    stmt = sa.delete(Event).where(Event.userId == user_id, Event.projectId == event_project_id)
    return cast(CursorResult[Any], await session.execute(stmt)).rowcount


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


async def get_last_sync(session: AsyncSession, user_id: str) -> LastSync | None:
    return (await session.execute(_LAST_SYNC, {"user_id": user_id})).scalar_one_or_none()


def _build_upsert_last_sync(ins: Upsert, table: sa.Table) -> sa.Insert:
    return ins.on_conflict_do_update(
        index_elements=[table.c.userId],
        set_={"lastSyncAt": ins.excluded.lastSyncAt, "updatedAt": ins.excluded.updatedAt},
    )


async def upsert_last_sync(session: AsyncSession, user_id: str, last_sync_at: datetime) -> None:
    now = utcnow()
    await session.execute(
        _cached(session, "upsert_last_sync", _build_upsert_last_sync),
        {
            "id": new_id(),
            "userId": user_id,
            "lastSyncAt": last_sync_at,
            "createdAt": now,
            "updatedAt": now,
        },
    )


# --- leases -------------------------------------------------------------------------------------


def _build_acquire_lease(ins: Upsert, table: sa.Table) -> sa.Insert:
    return ins.on_conflict_do_update(
        index_elements=[table.c.user_id],
        set_={
            "holder": ins.excluded.holder,
            "acquired_at": ins.excluded.acquired_at,
            "expires_at": ins.excluded.expires_at,
        },
        where=table.c.expires_at < sa.bindparam("lease_now", type_=table.c.expires_at.type),
    ).returning(table.c.holder)


async def try_acquire_lease(
    session: AsyncSession, user_id: str, holder: str, ttl_seconds: float
) -> bool:
    """Take the user's lease unless a live one exists; an expired lease is taken over."""
    now = utcnow()
    stmt = _cached(session, "try_acquire_lease", _build_acquire_lease)
    params = {
        "user_id": user_id,
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "lease_now": now,
    }
    got = (await session.execute(stmt, params)).scalar_one_or_none()
    return got == holder


async def renew_lease(session: AsyncSession, user_id: str, holder: str, ttl_seconds: float) -> bool:
    stmt = (
        sa.update(SyncLease)
        .where(SyncLease.user_id == user_id, SyncLease.holder == holder)
        .values(expires_at=utcnow() + timedelta(seconds=ttl_seconds))
    )
    result = cast(CursorResult[Any], await session.execute(stmt))
    return result.rowcount == 1


async def release_lease(session: AsyncSession, user_id: str, holder: str) -> None:
    await session.execute(
        sa.delete(SyncLease).where(SyncLease.user_id == user_id, SyncLease.holder == holder)
    )


_TRY_LOCK = sa.select(sa.func.pg_try_advisory_lock(sa.bindparam("key", type_=sa.BigInteger)))
_UNLOCK = sa.select(sa.func.pg_advisory_unlock(sa.bindparam("key", type_=sa.BigInteger)))


async def try_advisory_lock(session: AsyncSession, key: int) -> bool:
    """PostgreSQL session advisory lock: held until unlocked or the connection ends."""
    return bool((await session.execute(_TRY_LOCK, {"key": key})).scalar_one())


async def advisory_unlock(conn: AsyncConnection, key: int) -> None:
    await conn.execute(_UNLOCK, {"key": key})


async def live_leases(session: AsyncSession) -> list[SyncLease]:
    stmt = sa.select(SyncLease).where(SyncLease.expires_at >= utcnow())
    return list((await session.execute(stmt)).scalars())


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
    auth: str | None
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


# How the caller authenticated, when the poll_run table records it.
# TODO(oidc): the OIDC work may add this column (as `auth` or `auth_method`); it is read
# only when the model has it, so /api/runs shows it from then on without another change.
_RUN_AUTH_COLUMN = next((c for c in ("auth", "auth_method") if c in _table(PollRun).c), None)


async def list_runs(
    session: AsyncSession, *, limit: int, before: tuple[datetime, str] | None = None
) -> list[RunRecord]:
    """Runs newest first, at most `limit`, strictly older than the `(started_at, id)` key
    `before` (keyset pagination: stable while new runs arrive)."""
    table = _table(PollRun)
    auth = table.c[_RUN_AUTH_COLUMN] if _RUN_AUTH_COLUMN else sa.null()
    stmt = sa.select(
        table.c.id,
        table.c.trigger,
        auth.label("auth"),
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
