"""The newest app's work items: an issue or MR stored with its notes linked to it.

One page of bundles is written in the caller's transaction: the items, then the notes with
"parentEventId" set to the id of the same user's item row (never another user's: rows are
per user), then the authors. The app's own poller does the same per item, so no second
linking pass exists and no comment is ever stored unlinked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import naive_utc_ms, new_id, utcnow
from app.db.profile import SchemaProfile
from app.db.repository._base import _dialect
from app.db.repository.events import (
    _PG_INSERT_SQL,
    UpsertCounts,
    count_returned,
    driver_connection,
    event_table,
    newer_columns,
    pg_page,
    upsert_events,
)
from app.db.repository.people import upsert_people
from app.db.rows import PersonRow, WorkItemBundle

_ID_BATCH = 500


@dataclass(slots=True)
class StoredWorkItems:
    items: UpsertCounts = field(default_factory=UpsertCounts)
    notes: UpsertCounts = field(default_factory=UpsertCounts)
    # Item event id -> the comment event ids linked to its row before this write (what a
    # caller compares with the notes just read to find deleted ones).
    linked: dict[str, set[str]] = field(default_factory=dict)


async def store_work_items(
    session: AsyncSession | AsyncConnection,
    user_id: str,
    profile: SchemaProfile,
    bundles: Sequence[WorkItemBundle],
    people: Sequence[PersonRow] = (),
) -> StoredWorkItems:
    """Items, their notes (linked), and `people`: the columns the profile has, no others.
    One statement on PostgreSQL (atomic by itself); several in the caller's transaction
    elsewhere."""
    columns = newer_columns(profile)
    out = StoredWorkItems()
    if not bundles:
        return out
    if _dialect(session) == "postgresql":
        return await _pg_store_work_items(session, user_id, profile, bundles, people)
    out.items = await upsert_events(session, user_id, [b.item for b in bundles], columns)
    if "parentEventId" in profile.event_columns:
        ids, out.linked = await _item_rows(
            session, user_id, [b.item["gitlabEventId"] for b in bundles]
        )
        for bundle in bundles:
            parent = ids.get(bundle.item["gitlabEventId"])
            for note in bundle.notes:
                note["parentEventId"] = parent
    out.notes = await upsert_events(
        session, user_id, [n for b in bundles for n in b.notes], columns
    )
    if profile.has_person:
        await upsert_people(session, user_id, people)
    return out


async def _item_rows(
    session: AsyncSession | AsyncConnection, user_id: str, keys: list[str]
) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The user's rows of these items: their ids, and the comments linked to each."""
    table = event_table(("parentEventId",))
    item, comment = table.alias("item"), table.alias("comment")
    ids: dict[str, str] = {}
    linked: dict[str, set[str]] = {}
    for start in range(0, len(keys), _ID_BATCH):
        stmt = (
            sa.select(item.c.gitlabEventId, item.c.id, comment.c.gitlabEventId)
            .select_from(
                item.outerjoin(
                    comment,
                    sa.and_(
                        comment.c.userId == item.c.userId, comment.c.parentEventId == item.c.id
                    ),
                )
            )
            .where(
                item.c.userId == user_id, item.c.gitlabEventId.in_(keys[start : start + _ID_BATCH])
            )
        )
        for key, row_id, child in (await session.execute(stmt)).all():
            ids[key] = row_id
            children = linked.setdefault(key, set())
            if child is not None:
                children.add(child)
    return ids, linked


# --- PostgreSQL: a page of bundles in one statement ------------------------------------------


def _pg_work_items_sql(columns: tuple[str, ...], linked: bool, people: bool) -> str:
    """Items, then (`linked`) each item's row id and the comments linked to it before this
    statement, the notes with "parentEventId" set to that id, and (`people`) the authors.

    Data-modifying CTEs all see the snapshot the statement started with: an item row that
    existed is found there (its id never changes on update), a new one only in the items'
    RETURNING, hence the COALESCE. "Linked before this write" is that snapshot too.
    """
    items = _PG_INSERT_SQL(columns, "$3", returning='id, "gitlabEventId"')
    parts = [f"items AS ({items})"]
    if linked:
        parts.append(
            'parents AS (SELECT k."gitlabEventId" AS key, COALESCE(i.id, e.id) AS id '
            'FROM json_to_recordset($3::json) AS k("gitlabEventId" text) '
            'LEFT JOIN items i ON i."gitlabEventId" = k."gitlabEventId" '
            'LEFT JOIN "Event" e ON e."userId" = $1 AND e."gitlabEventId" = k."gitlabEventId")'
        )
        parts.append(
            'children AS (SELECT p.key, c."gitlabEventId" AS child FROM parents p '
            'JOIN "Event" c ON c."userId" = $1 AND c."parentEventId" = p.id)'
        )
        notes = _PG_INSERT_SQL(columns, "$4", parent="p")
    else:
        notes = _PG_INSERT_SQL(columns, "$4")
    parts.append(f"notes AS ({notes})")
    if people:
        parts.append(
            'people AS (INSERT INTO "Person" (id, "userId", "gitlabId", username, name, '
            '"avatarUrl", "createdAt", "updatedAt") '
            'SELECT r.id, $1, r."gitlabId", r.username, r.name, r."avatarUrl", $2::timestamp, '
            "$2::timestamp FROM json_to_recordset($5::json) AS r(id text, "
            '"gitlabId" integer, username text, name text, "avatarUrl" text) '
            'ORDER BY r."gitlabId" '
            'ON CONFLICT ("userId", "gitlabId") DO UPDATE SET username = excluded.username, '
            'name = excluded.name, "avatarUrl" = excluded."avatarUrl", '
            '"updatedAt" = excluded."updatedAt" '
            'WHERE "Person".username IS DISTINCT FROM excluded.username '
            'OR "Person".name IS DISTINCT FROM excluded.name '
            'OR "Person"."avatarUrl" IS DISTINCT FROM excluded."avatarUrl" RETURNING 1)'
        )
    # One row of arrays (no row object per written row): the items' ids written, the
    # notes', and the (item, comment) pairs linked before this write.
    pairs = (
        "(SELECT array_agg(key) FROM children), (SELECT array_agg(child) FROM children)"
        if linked
        else "NULL, NULL"
    )
    return (
        "WITH "  # noqa: S608 - our own names only
        + ", ".join(parts)
        + " SELECT (SELECT array_agg(id) FROM items), (SELECT array_agg(id) FROM notes), "
        + pairs
    )


_JSON = msgspec.json.Encoder()
_PG_WORK_ITEMS: dict[tuple[tuple[str, ...], bool, bool], str] = {}


async def _pg_store_work_items(
    db: AsyncSession | AsyncConnection,
    user_id: str,
    profile: SchemaProfile,
    bundles: Sequence[WorkItemBundle],
    people: Sequence[PersonRow],
) -> StoredWorkItems:
    columns = newer_columns(profile)
    linked = "parentEventId" in profile.event_columns
    key = (columns, linked, profile.has_person)
    sql = _PG_WORK_ITEMS.get(key)
    if sql is None:
        sql = _PG_WORK_ITEMS[key] = _pg_work_items_sql(*key)
    items, item_ids = pg_page((b.item for b in bundles), columns)
    notes = [
        {**note, "parentKey": b.item["gitlabEventId"]} if linked else note
        for b in bundles
        for note in b.notes
    ]
    notes_page, note_ids = pg_page(notes, columns)  # type: ignore[arg-type]
    now = naive_utc_ms(utcnow())
    params: tuple[object, ...] = (user_id, now, items, notes_page)
    if profile.has_person:
        unique = {p["gitlabId"]: p for p in people}
        people_page = [{**unique[k], "id": new_id()} for k in sorted(unique)]
        params += (_JSON.encode(people_page).decode(),)
    conn = await driver_connection(db)
    written_items, written_notes, keys, children = tuple(
        (await conn.exec_driver_sql(sql, params)).one()
    )
    out = StoredWorkItems(
        items=count_returned(written_items or (), item_ids),
        notes=count_returned(written_notes or (), note_ids),
    )
    for item_key, child in zip(keys or (), children or (), strict=True):
        out.linked.setdefault(item_key, set()).add(child)
    return out


__all__ = ["StoredWorkItems", "store_work_items"]
