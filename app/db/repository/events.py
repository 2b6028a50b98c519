"""Events: the page upsert, counts, and removals (access loss, reconciliation)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Event,
    UTCDateTime,
    naive_utc_ms,
    new_id,
    utcnow,
)
from app.db.profile import (
    NEWER_COLUMN_KINDS,
    NEWER_EVENT_COLUMNS,
    STORY,
    ColumnKind,
    SchemaProfile,
)
from app.db.repository._base import _dialect, _insert, _table
from app.db.rows import EventRow

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


# --- events -------------------------------------------------------------------------------


@dataclass(slots=True)
class UpsertCounts:
    inserted: int = 0
    updated: int = 0

    def __iadd__(self, other: UpsertCounts) -> UpsertCounts:
        self.inserted += other.inserted
        self.updated += other.updated
        return self


# Newer "Event" columns (db/profile.py) for the portable statement: a table of their own,
# never in the models' metadata (this service never creates them).
_NEWER_TYPES: dict[ColumnKind, Any] = {
    "text": sa.Text(),
    "int": sa.Integer(),
    "bool": sa.Boolean(),
    "time": UTCDateTime(),
    "text[]": sa.JSON().with_variant(postgresql.ARRAY(sa.Text()), "postgresql"),
    "int[]": sa.JSON().with_variant(postgresql.ARRAY(sa.Integer()), "postgresql"),
}
_EVENT_TABLES: dict[tuple[str, ...], sa.Table] = {}


def event_table(columns: tuple[str, ...] = ()) -> sa.Table:
    """ "Event" with the story columns and these newer ones (cached per set)."""
    if not columns:
        return _table(Event)
    table = _EVENT_TABLES.get(columns)
    if table is None:
        story = [sa.Column(c.name, c.type, primary_key=c.primary_key) for c in _table(Event).c]
        newer = [sa.Column(c, _NEWER_TYPES[NEWER_COLUMN_KINDS[c]]) for c in columns]
        table = _EVENT_TABLES[columns] = sa.Table("Event", sa.MetaData(), *story, *newer)
    return table


def newer_columns(profile: SchemaProfile) -> tuple[str, ...]:
    """The newer "Event" columns of the profile, in one stable order."""
    return tuple(c for c in NEWER_EVENT_COLUMNS if c in profile.event_columns)


_UPSERT_EVENTS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _upsert_events_stmt(session: AsyncSession, columns: tuple[str, ...]) -> sa.Insert:
    """The events upsert, built once per dialect (and column set) and executed with a list
    of rows.

    Built without values, so SQLAlchemy compiles it once and caches it; a list of parameter
    sets runs as batched multi-row INSERT ... RETURNING ("insertmanyvalues"). Building it
    per call with .values(rows) re-created the EXCLUDED alias and recompiled the statement
    for every page: half of the service's CPU time.
    """
    key = (_dialect(session), columns)
    stmt = _UPSERT_EVENTS.get(key)
    if stmt is None:
        table = event_table(columns)
        ins = _insert(session, table)
        excluded = ins.excluded
        tracked = (*_TRACKED_COLUMNS, *columns)
        changed = sa.or_(*(table.c[c].is_distinct_from(excluded[c]) for c in tracked))
        stmt = ins.on_conflict_do_update(
            index_elements=[table.c.userId, table.c.gitlabEventId],
            set_={
                **{c: excluded[c] for c in tracked},
                "createdAt": excluded.createdAt,
                "type": excluded.type,
                "updatedAt": excluded.updatedAt,
            },
            where=changed,
        ).returning(table.c.id)
        _UPSERT_EVENTS[key] = stmt
    return stmt


def _json_array(column: str, element: str) -> str:
    """A JSON array of the page back to a PostgreSQL array, in its order: '{}' for an empty
    or missing one, never NULL (the app's array filters do not see NULL as empty)."""
    cast = "" if element == "text" else f"::{element}"
    return (  # our own column names only
        f'ARRAY(SELECT a.v{cast} FROM json_array_elements_text(r."{column}") '  # noqa: S608
        "WITH ORDINALITY AS a(v, n) ORDER BY a.n)"
    )


# How each column travels in the page's JSON record, and how it is read back.
_PG_RECORD_TYPES: dict[str, str] = {
    "labels": "json",
    "createdAt": "timestamp(3)",
    "lastActivityAt": "timestamp(3)",
    "iid": "integer",
    "commentCount": "integer",
    "unresolvedCommentCount": "integer",
    "gitlabParentId": "integer",
    "isSystemNote": "boolean",
    "assignees": "json",
    "participants": "json",
    "mentionedInIds": "json",
    "closesIssueIds": "json",
}
_PG_ARRAYS = {
    "labels": "text",
    "assignees": "text",
    "participants": "text",
    "mentionedInIds": "integer",
    "closesIssueIds": "integer",
}


def _pg_upsert_events_sql(columns: tuple[str, ...] = ()) -> sa.TextClause:
    """PostgreSQL: the whole page as one JSON parameter, unpacked by json_to_recordset.

    Same ON CONFLICT as the portable statement, but SQLAlchemy and asyncpg handle one
    parameter instead of 14 per row: per-row parameter processing was about a quarter of
    the service's CPU on a backfill. Times travel as naive UTC text at millisecond
    precision (TIMESTAMP(3), truncated like UTCDateTime), never through a session time zone.
    `columns`: the newer "Event" columns written too (db/profile.py).
    """
    story = [c.name for c in _table(Event).c if c.name not in ("userId", "updatedAt")]
    cols = [*story, *columns]
    record = ", ".join(f'"{c}" {_PG_RECORD_TYPES.get(c, "text")}' for c in cols)
    picked = ", ".join(
        _json_array(c, _PG_ARRAYS[c]) if c in _PG_ARRAYS else f'r."{c}"' for c in cols
    )
    names = ", ".join(f'"{c}"' for c in cols)
    tracked = (*_TRACKED_COLUMNS, *columns)
    changed = " OR ".join(f'"Event"."{c}" IS DISTINCT FROM excluded."{c}"' for c in tracked)
    updated = ", ".join(
        f'"{c}" = excluded."{c}"' for c in (*tracked, "createdAt", "type", "updatedAt")
    )
    # Built from the model's and the profile's own column names: no outside text in it.
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


_PG_UPSERT_EVENTS: dict[tuple[str, ...], sa.TextClause] = {(): _pg_upsert_events_sql()}


def _pg_upsert_events(columns: tuple[str, ...]) -> sa.TextClause:
    stmt = _PG_UPSERT_EVENTS.get(columns)
    if stmt is None:
        stmt = _PG_UPSERT_EVENTS[columns] = _pg_upsert_events_sql(columns)
    return stmt


def _as_text(stored: datetime) -> str:
    return stored.isoformat(timespec="milliseconds")


def _pg_json_row(row: EventRow, columns: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {
        **row,
        "id": new_id(),
        "createdAt": _as_text(naive_utc_ms(row["createdAt"])),
    }
    if "lastActivityAt" in columns:
        last = row.get("lastActivityAt")
        values["lastActivityAt"] = None if last is None else _as_text(naive_utc_ms(last))
    return values


async def upsert_events(
    session: AsyncSession, user_id: str, rows: Sequence[EventRow], columns: tuple[str, ...] = ()
) -> UpsertCounts:
    """Insert new events, update changed ones, leave unchanged rows alone: one statement.

    `columns`: the newer "Event" columns to write too (`newer_columns(profile)`); the rows
    then carry them (work-item bundles). Every row gets a fresh id; RETURNING gives back the
    id now in the table, so a returned id equal to ours was inserted and any other was
    updated. Unchanged rows return nothing.
    """
    if not rows:
        return UpsertCounts()
    # One row per key: a page never holds duplicates, but ON CONFLICT would fail on them.
    unique = {r["gitlabEventId"]: r for r in rows}
    now = utcnow()
    if _dialect(session) == "postgresql":
        values = [_pg_json_row(r, columns) for r in unique.values()]
        params = {"user_id": user_id, "now": now, "rows": json.dumps(values, ensure_ascii=False)}
        result = await session.execute(_pg_upsert_events(columns), params)
    else:
        values = [
            {**r, "id": new_id(), "userId": user_id, "updatedAt": now} for r in unique.values()
        ]
        result = await session.execute(_upsert_events_stmt(session, columns), values)
    ours = {v["id"] for v in values}
    returned = result.scalars().all()
    inserted = sum(1 for i in returned if i in ours)
    return UpsertCounts(inserted=inserted, updated=len(returned) - inserted)


async def count_events(session: AsyncSession, user_id: str | None = None) -> int:
    stmt = sa.select(sa.func.count(Event.id))
    if user_id:
        stmt = stmt.where(Event.userId == user_id)
    return (await session.execute(stmt)).scalar_one()


# --- access loss and reconciliation (README: "Access and deletions") -----------------------

# Ids per DELETE statement: far below every driver's parameter limit.
_DELETE_BATCH = 500


async def project_events(
    session: AsyncSession,
    user_id: str,
    project_ids: Sequence[str],
    profile: SchemaProfile = STORY,
) -> list[tuple[str, str, str, bool, bool]]:
    """(gitlabEventId, type, gitlabUrl, isSystemNote, complete) of a user's events of one
    project, whose "projectId" is any of `project_ids` (conventions: ProjectRef).

    `complete` is false for a row the profile's newer columns are missing from: written
    before the app was upgraded (no activity, no link to its item, or the older
    "projectId"). Reconciliation rewrites those. Always true on the story schema.
    """
    columns = newer_columns(profile)
    table = event_table(columns)
    c = table.c
    system: Any = c.isSystemNote if "isSystemNote" in columns else sa.false()
    complete: Any = sa.true()
    if profile.work_items:
        current = c.projectId == project_ids[0]
        item_cols = [c[n] for n in ("iid", "status", "lastActivityAt") if n in columns]
        note_cols = [c[n] for n in ("parentEventId", "discussionId", "parentType") if n in columns]
        complete = sa.and_(
            current,
            sa.case(
                (c.type == "comment", sa.and_(sa.true(), *(x.is_not(None) for x in note_cols))),
                else_=sa.and_(sa.true(), *(x.is_not(None) for x in item_cols)),
            ),
        )
    stmt = sa.select(c.gitlabEventId, c.type, c.gitlabUrl, system, complete).where(
        c.userId == user_id, c.projectId.in_(list(project_ids))
    )
    return [(r[0], r[1], r[2], bool(r[3]), bool(r[4])) for r in (await session.execute(stmt)).all()]


async def delete_events(
    session: AsyncSession,
    user_id: str,
    event_ids: Sequence[str],
    profile: SchemaProfile = STORY,
) -> int:
    """Remove these events of the user; returns how many rows went. Where comments link to
    their item ("parentEventId"), an item's linked comments go with it (the app's foreign
    key would only unlink them)."""
    removed = 0
    ids = list(event_ids)
    linked = "parentEventId" in profile.event_columns
    table = event_table(("parentEventId",)) if linked else _table(Event)
    for i in range(0, len(ids), _DELETE_BATCH):
        batch = ids[i : i + _DELETE_BATCH]
        if linked:
            items = sa.select(table.c.id).where(
                table.c.userId == user_id, table.c.gitlabEventId.in_(batch)
            )
            stmt = sa.delete(table).where(
                table.c.userId == user_id, table.c.parentEventId.in_(items)
            )
            removed += cast(CursorResult[Any], await session.execute(stmt)).rowcount
        stmt = sa.delete(table).where(table.c.userId == user_id, table.c.gitlabEventId.in_(batch))
        removed += cast(CursorResult[Any], await session.execute(stmt)).rowcount
    return removed


async def delete_project_events(
    session: AsyncSession, user_id: str, project_ids: Sequence[str]
) -> int:
    """Every event of the user whose "projectId" is one of `project_ids` (ProjectRef)."""
    stmt = sa.delete(Event).where(Event.userId == user_id, Event.projectId.in_(list(project_ids)))
    return cast(CursorResult[Any], await session.execute(stmt)).rowcount


__all__ = [
    "event_table",
    "newer_columns",
    "UpsertCounts",
    "count_events",
    "delete_events",
    "delete_project_events",
    "project_events",
    "upsert_events",
]
