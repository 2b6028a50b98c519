"""Leases: the lease table and PostgreSQL advisory locks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.db.models import (
    SyncLease,
    utcnow,
)
from app.db.repository._base import Upsert, _cached, _table

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
    stmt = _cached(session, "try_acquire_lease", _table(SyncLease), _build_acquire_lease)
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


__all__ = [
    "advisory_unlock",
    "live_leases",
    "release_lease",
    "renew_lease",
    "try_acquire_lease",
    "try_advisory_lock",
]
