"""PostgreSQL pooled connections: one that died while idle in the pool (server restart,
idle timeout, a killed backend) is replaced at checkout, never handed to a caller; none is
left open when the service stops during its start-up warm-up."""

from __future__ import annotations

import asyncio
import random

import sqlalchemy as sa

from app import metrics
from app.db.engine import create_engine
from app.settings import load_settings

PID = sa.text("SELECT pg_backend_pid()")


async def test_a_connection_killed_while_pooled_is_replaced_at_checkout(pg_url) -> None:
    engine = create_engine(load_settings(database_url=pg_url, db_pool_size=2))
    try:
        async with engine.connect() as admin:
            async with engine.connect() as conn:
                victim = (await conn.execute(PID)).scalar_one()
            # Back in the pool, idle: now its server process goes.
            killed = await admin.execute(sa.text(f"SELECT pg_terminate_backend({victim})"))
            assert killed.scalar_one() is True
        in_use = metrics.DB_POOL_CHECKED_OUT._value.get()

        # Both pooled connections are checked out again; the dead one must not be among
        # them, and the first statement on each works.
        async with engine.connect() as a, engine.connect() as b:
            pids = {(await a.execute(PID)).scalar_one(), (await b.execute(PID)).scalar_one()}
            assert victim not in pids
            assert len(pids) == 2
            assert metrics.DB_POOL_CHECKED_OUT._value.get() == in_use + 2
        assert metrics.DB_POOL_CHECKED_OUT._value.get() == in_use
    finally:
        await engine.dispose()


async def test_a_shutdown_during_the_warm_up_leaves_no_connection_open(pg_url) -> None:
    """The lifespan stops while its background warm-up is still opening pooled connections:
    they must be closed, not left open to be found by the garbage collector."""
    from urllib.parse import urlsplit

    import asyncpg

    from app.main import create_app

    name = urlsplit(pg_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_url.replace("+asyncpg", "").rsplit("/", 1)[0] + "/postgres")
    try:
        for _ in range(5):  # the warm-up is at a different point each time
            app = create_app(load_settings(database_url=pg_url, poll_concurrency=5))
            async with app.router.lifespan_context(app):
                await asyncio.sleep(random.uniform(0, 0.02))
            still_open = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
            )
            assert still_open == 0
    finally:
        await admin.close()
