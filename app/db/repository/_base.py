"""Shared helpers of the repository modules: the dialect, its upsert, cached statements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

# Both dialects' INSERT ... ON CONFLICT statements (the same API: excluded, on_conflict_*).
Upsert = postgresql.Insert | sqlite.Insert


def _dialect(session: AsyncSession | AsyncConnection) -> str:
    if isinstance(session, AsyncConnection):
        return session.dialect.name
    return session.get_bind().dialect.name


def _table(model: Any) -> sa.Table:
    """A model's table (typed as a Table: declarative models expose a generic FromClause)."""
    return cast(sa.Table, model.__table__)


def _insert(session: AsyncSession | AsyncConnection, table: sa.Table | type[Any]) -> Upsert:
    name = _dialect(session)
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise RuntimeError(f"unsupported database dialect {name}")


_STATEMENTS: dict[tuple[str, str], sa.Insert] = {}


def _cached(
    session: AsyncSession | AsyncConnection,
    name: str,
    table: sa.Table,
    build: Callable[[Upsert, sa.Table], sa.Insert],
) -> sa.Insert:
    """An upsert built once per dialect, without values, executed with a parameter dict:
    SQLAlchemy then reuses its compiled form instead of rebuilding and re-keying it."""
    key = (name, _dialect(session))
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(_insert(session, table), table)
    return stmt
