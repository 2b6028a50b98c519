"""What the database's schema has of the original app's newer versions (db/profile.py)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.profile import SchemaProfile


def schema_columns(conn: sa.Connection) -> tuple[set[str], set[str] | None]:
    """The columns of "Event", and of "Person" (None when it does not exist)."""
    insp = sa.inspect(conn)
    # No "Event" yet (an empty database before `migrate`): nothing newer either.
    event = {c["name"] for c in insp.get_columns("Event")} if insp.has_table("Event") else set()
    person = {c["name"] for c in insp.get_columns("Person")} if insp.has_table("Person") else None
    return event, person


async def read_schema_profile(db: AsyncSession | AsyncConnection) -> SchemaProfile:
    """The schema profile of the database `db` is connected to (two catalog reads)."""
    conn = await db.connection() if isinstance(db, AsyncSession) else db
    event, person = await conn.run_sync(schema_columns)
    return SchemaProfile.from_columns(event, person)


__all__ = ["read_schema_profile", "schema_columns"]
