"""The newest app's work items: an issue or MR stored with its notes linked to it.

One page of bundles is written in the caller's transaction: the items, then the notes with
"parentEventId" set to the id of the same user's item row (never another user's: rows are
per user), then the authors. The app's own poller does the same per item, so no second
linking pass exists and no comment is ever stored unlinked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.profile import SchemaProfile
from app.db.repository.events import UpsertCounts, event_table, newer_columns, upsert_events
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
    session: AsyncSession,
    user_id: str,
    profile: SchemaProfile,
    bundles: Sequence[WorkItemBundle],
    people: Sequence[PersonRow] = (),
) -> StoredWorkItems:
    """Items, their notes (linked), and `people`: the columns the profile has, no others."""
    columns = newer_columns(profile)
    out = StoredWorkItems()
    if not bundles:
        return out
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
    session: AsyncSession, user_id: str, keys: list[str]
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


__all__ = ["StoredWorkItems", "store_work_items"]
