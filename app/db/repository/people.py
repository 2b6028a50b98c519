"""The newest app's "Person" table: the GitLab users a polling user has seen.

Never created by this service (the app's schema has it, or not: db/profile.py), so its
table is declared here apart from the models' metadata. Rows are upserted on
("userId", "gitlabId"), never deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import UTCDateTime, new_id, utcnow
from app.db.repository._base import Upsert, _cached
from app.db.rows import PersonRow

PERSON = sa.Table(
    "Person",
    sa.MetaData(),
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("userId", sa.Text, nullable=False),
    sa.Column("gitlabId", sa.Integer, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("avatarUrl", sa.Text),
    sa.Column("createdAt", UTCDateTime, nullable=False),
    sa.Column("updatedAt", UTCDateTime, nullable=False),
)


def _build_upsert_people(ins: Upsert, table: sa.Table) -> sa.Insert:
    excluded = ins.excluded
    written = ("username", "name", "avatarUrl")
    return ins.on_conflict_do_update(
        index_elements=[table.c.userId, table.c.gitlabId],
        # GitLab's latest answer wins, as in the app's upsert; unchanged rows stay as they are.
        set_={**{c: excluded[c] for c in written}, "updatedAt": excluded.updatedAt},
        where=sa.or_(*(table.c[c].is_distinct_from(excluded[c]) for c in written)),
    )


async def upsert_people(
    session: AsyncSession | AsyncConnection, user_id: str, people: Sequence[PersonRow]
) -> None:
    """Insert or refresh these people of the user: one statement, rows sorted by GitLab id
    (concurrent writers then lock them in one order)."""
    if not people:
        return
    now = utcnow()
    unique = {p["gitlabId"]: p for p in people}
    params: list[dict[str, Any]] = [
        {**unique[k], "id": new_id(), "userId": user_id, "createdAt": now, "updatedAt": now}
        for k in sorted(unique)
    ]
    stmt = _cached(session, "upsert_people", PERSON, _build_upsert_people)
    await session.execute(stmt, params)


__all__ = ["PERSON", "upsert_people"]
