"""The pool's pre-ping (one round trip on PostgreSQL) still replaces a dropped connection."""

from __future__ import annotations

import asyncpg
import sqlalchemy as sa

from app.db import engine as engine_mod
from app.db.engine import create_engine
from tests.support import make_settings


async def test_pre_ping_keeps_a_live_connection_and_replaces_a_terminated_one(pg_url, monkeypatch):
    pings: list[str] = []
    real = engine_mod._ping_asyncpg

    def counting(dbapi_connection):
        try:
            result = real(dbapi_connection)
        except Exception as exc:
            pings.append(type(exc).__name__)
            raise
        pings.append("ok")
        return result

    monkeypatch.setattr(engine_mod, "_ping_asyncpg", counting)
    engine = create_engine(make_settings(pg_url, db_pool_size=1))
    try:
        async with engine.connect() as c:
            first = (await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        async with engine.connect() as c:  # pooled: pinged, still the same backend
            assert (await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one() == first
        assert pings == ["ok"]

        admin = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()

        async with engine.connect() as c:  # the ping sees it gone; a new connection serves
            second = (await c.execute(sa.text("SELECT pg_backend_pid()"))).scalar_one()
        assert second != first
        assert pings[:2] == ["ok", "InterfaceError"]
    finally:
        await engine.dispose()
