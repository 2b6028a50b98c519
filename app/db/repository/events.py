"""Events: the page upsert, counts, and removals (access loss, reconciliation)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import (
    Event,
    UTCDateTime,
    naive_utc_ms,
    new_id,
    utcnow,
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


__all__ = [
    "UpsertCounts",
    "count_events",
    "delete_events",
    "delete_project_events",
    "project_events",
    "upsert_events",
]
