"""Events: the page upsert, counts, and removals (access loss, reconciliation)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    Event,
    UTCDateTime,
    naive_utc_ms,
    new_id,
    new_ids,
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


def _upsert_events_stmt(
    session: AsyncSession | AsyncConnection, columns: tuple[str, ...]
) -> sa.Insert:
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


def _pg_columns(columns: tuple[str, ...]) -> list[str]:
    story = [c.name for c in _table(Event).c if c.name not in ("userId", "updatedAt")]
    return [*story, *columns]


def _pg_insert_sql(
    columns: tuple[str, ...], rows: str, *, parent: str | None = None, returning: str = "id, type"
) -> str:
    """PostgreSQL: `INSERT INTO "Event" ... SELECT ... FROM json_to_recordset(<rows>)` with
    the ON CONFLICT of the portable statement, in driver SQL ($1 the user, $2 the time).

    The whole page travels as one JSON parameter: SQLAlchemy and asyncpg handle one
    parameter instead of 14 per row (per-row parameter processing was about a quarter of the
    service's CPU on a backfill). Times travel as naive UTC text at millisecond precision
    (TIMESTAMP(3), truncated like UTCDateTime), never through a session time zone.
    `columns`: the newer "Event" columns written too (db/profile.py). `parent`: the
    "parentEventId" of each row is `<parent>.id` of the FROM clause that follows the
    recordset (work items: the same user's item row), not the row's own value.
    """
    cols = _pg_columns(columns)
    record = ", ".join(f'"{c}" {_PG_RECORD_TYPES.get(c, "text")}' for c in cols)
    if parent is not None:
        record += ', "parentKey" text'

    def pick(c: str) -> str:
        if parent is not None and c == "parentEventId":
            return f"{parent}.id"
        return _json_array(c, _PG_ARRAYS[c]) if c in _PG_ARRAYS else f'r."{c}"'

    names = ", ".join(f'"{c}"' for c in cols)
    tracked = (*_TRACKED_COLUMNS, *columns)
    changed = " OR ".join(f'"Event"."{c}" IS DISTINCT FROM excluded."{c}"' for c in tracked)
    updated = ", ".join(
        f'"{c}" = excluded."{c}"' for c in (*tracked, "createdAt", "type", "updatedAt")
    )
    joined = (
        f' LEFT JOIN parents {parent} ON {parent}.key = r."parentKey"' if parent is not None else ""
    )
    # Built from the model's and the profile's own column names: no outside text in it.
    return (
        f'INSERT INTO "Event" ({names}, "userId", "updatedAt") '  # noqa: S608
        f"SELECT {', '.join(pick(c) for c in cols)}, $1, $2::timestamp "
        f"FROM json_to_recordset({rows}::json) AS r({record}){joined} "
        f'ON CONFLICT ("userId", "gitlabEventId") DO UPDATE SET {updated} WHERE {changed} '
        f"RETURNING {returning}"
    )


_PG_UPSERT_EVENTS: dict[tuple[str, ...], str] = {}
_JSON = msgspec.json.Encoder()
_PG_INSERT_SQL = _pg_insert_sql  # work_items.py builds its page statement from the same parts


def _pg_upsert_events(columns: tuple[str, ...]) -> str:
    """The upsert of a page, answering one row: the ids of the items' rows written and those
    of the comments' (an array each: no row object per written row)."""
    sql = _PG_UPSERT_EVENTS.get(columns)
    if sql is None:
        sql = _PG_UPSERT_EVENTS[columns] = (
            f"WITH written AS ({_pg_insert_sql(columns, '$3')}) "  # noqa: S608 - ours only
            "SELECT coalesce(array_agg(id) FILTER (WHERE type <> 'comment'), '{}'), "
            "coalesce(array_agg(id) FILTER (WHERE type = 'comment'), '{}') FROM written"
        )
    return sql


def _as_text(stored: datetime) -> str:
    return stored.isoformat(timespec="milliseconds")


def _pg_json_row(row: EventRow, columns: tuple[str, ...], row_id: str) -> dict[str, Any]:
    values: dict[str, Any] = {
        **row,
        "id": row_id,
        "createdAt": _as_text(naive_utc_ms(row["createdAt"])),
    }
    if "lastActivityAt" in columns:
        last = row.get("lastActivityAt")
        values["lastActivityAt"] = None if last is None else _as_text(naive_utc_ms(last))
    return values


def pg_page(rows: Iterable[EventRow], columns: tuple[str, ...]) -> tuple[str, set[str]]:
    """Rows as the JSON parameter of the PostgreSQL statements (one per key), and the ids
    given to them (a returned id among them was inserted; any other was updated)."""
    unique = {r["gitlabEventId"]: r for r in rows}
    ids = new_ids(len(unique))
    values = [_pg_json_row(r, columns, i) for r, i in zip(unique.values(), ids, strict=True)]
    # msgspec's encoder: the same JSON as json.dumps(ensure_ascii=False), several times faster
    # (a page of a backfill is hundreds of rows).
    return _JSON.encode(values).decode(), {v["id"] for v in values}


async def driver_connection(db: AsyncSession | AsyncConnection) -> AsyncConnection:
    """The connection under `db` (a session's, inside its transaction), for driver SQL."""
    return db if isinstance(db, AsyncConnection) else await db.connection()


def count_returned(returned: Iterable[Any], ours: set[str]) -> UpsertCounts:
    ids = list(returned)
    inserted = sum(1 for i in ids if i in ours)
    return UpsertCounts(inserted=inserted, updated=len(ids) - inserted)


async def upsert_events(
    session: AsyncSession | AsyncConnection,
    user_id: str,
    rows: Sequence[EventRow],
    columns: tuple[str, ...] = (),
) -> UpsertCounts:
    """Insert new events, update changed ones, leave unchanged rows alone: one statement.

    `columns`: the newer "Event" columns to write too (`newer_columns(profile)`); the rows
    then carry them (work-item bundles). Every row gets a fresh id; RETURNING gives back the
    id now in the table, so a returned id equal to ours was inserted and any other was
    updated. Unchanged rows return nothing.
    """
    if not rows:
        return UpsertCounts()
    if _dialect(session) == "postgresql":
        page, ours = pg_page(rows, columns)
        conn = await driver_connection(session)
        params = (user_id, naive_utc_ms(utcnow()), page)
        pg = await conn.exec_driver_sql(_pg_upsert_events(columns), params)
        items, notes = tuple(pg.one())
        return count_returned([*items, *notes], ours)
    # One row per key: a page never holds duplicates, but ON CONFLICT would fail on them.
    unique = {r["gitlabEventId"]: r for r in rows}
    now = utcnow()
    values = [{**r, "id": new_id(), "userId": user_id, "updatedAt": now} for r in unique.values()]
    result = await session.execute(_upsert_events_stmt(session, columns), values)
    return count_returned(result.scalars().all(), {str(v["id"]) for v in values})


async def upsert_page(
    db: AsyncSession | AsyncConnection,
    user_id: str,
    items: Sequence[EventRow],
    notes: Sequence[EventRow],
) -> tuple[UpsertCounts, UpsertCounts]:
    """A listing page's items and their new notes (the story schema's columns): one
    statement on PostgreSQL (atomic by itself), two elsewhere (the caller's transaction).
    Returns the items' counts and the notes'."""
    if _dialect(db) != "postgresql":
        return await upsert_events(db, user_id, items), await upsert_events(db, user_id, notes)
    if not items and not notes:
        return UpsertCounts(), UpsertCounts()
    page, ours = pg_page([*items, *notes], ())
    conn = await driver_connection(db)
    params = (user_id, naive_utc_ms(utcnow()), page)
    result = await conn.exec_driver_sql(_pg_upsert_events(()), params)
    item_ids, note_ids = tuple(result.one())
    return count_returned(item_ids, ours), count_returned(note_ids, ours)


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
    "count_returned",
    "driver_connection",
    "event_table",
    "newer_columns",
    "pg_page",
    "UpsertCounts",
    "count_events",
    "delete_events",
    "delete_project_events",
    "project_events",
    "upsert_events",
    "upsert_page",
]
