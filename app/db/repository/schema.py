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


# PostgreSQL: the columns of both tables in one catalog query, in the schema the inspector
# reads by default (the first of the search path); the inspector took about a dozen.
_PG_COLUMNS = sa.text(
    "SELECT c.relname, a.attname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
    "AND NOT a.attisdropped "
    "WHERE n.nspname = current_schema() AND c.relname IN ('Event', 'Person') "
    "AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
)


async def read_schema_profile(db: AsyncSession | AsyncConnection) -> SchemaProfile:
    """The schema profile of the database `db` is connected to (read once per run)."""
    conn = await db.connection() if isinstance(db, AsyncSession) else db
    if conn.dialect.name != "postgresql":
        event, person = await conn.run_sync(schema_columns)
        return SchemaProfile.from_columns(event, person)
    tables: dict[str, set[str]] = {}
    for table, column in (await conn.execute(_PG_COLUMNS)).all():
        tables.setdefault(table, set()).add(column)
    return SchemaProfile.from_columns(tables.get("Event", set()), tables.get("Person"))


__all__ = ["read_schema_profile", "schema_columns"]
