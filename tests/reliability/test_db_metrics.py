"""Database connection metrics: checkouts in use and time waited for a pooled connection."""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa

from app import metrics
from app.db.engine import create_engine
from tests.support import LiveServer, make_settings


def _sample(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


IN_USE = "gitlab_insights_db_connections_in_use"
WAIT_COUNT = "gitlab_insights_db_connection_wait_seconds_count"
WAIT_SUM = "gitlab_insights_db_connection_wait_seconds_sum"


async def test_pool_wait_and_checked_out_connections_are_measured(pg_url):
    # One connection, no overflow: the second checkout must wait for the first to return.
    settings = make_settings(pg_url, db_pool_size=1, db_pool_timeout=10)
    engine = create_engine(settings)
    engine.sync_engine.pool._max_overflow = 0  # db_pool_size doubles as overflow otherwise
    hold = 0.3
    try:
        before_in_use = _sample(IN_USE)
        before_count, before_sum = _sample(WAIT_COUNT), _sample(WAIT_SUM)
        first = await engine.connect()
        await first.execute(sa.text("SELECT 1"))
        assert _sample(IN_USE) == before_in_use + 1

        async def second() -> None:
            async with engine.connect() as c:
                await c.execute(sa.text("SELECT 1"))
                assert _sample(IN_USE) == before_in_use + 1

        task = asyncio.create_task(second())
        await asyncio.sleep(hold)
        assert not task.done(), "the second checkout should be waiting for the only connection"
        await first.close()
        await asyncio.wait_for(task, 10)
        assert _sample(IN_USE) == before_in_use
        assert _sample(WAIT_COUNT) == before_count + 2
        # The waiting checkout took at least as long as the connection was held.
        assert _sample(WAIT_SUM) - before_sum >= hold * 0.9
    finally:
        await engine.dispose()


def test_metrics_endpoint_exposes_connection_metrics(db_url):
    with LiveServer(make_settings(db_url)) as server:
        # Any request that touches the database checks a connection out and back in.
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert IN_USE in text
    count = [ln for ln in text.splitlines() if ln.startswith(WAIT_COUNT)]
    assert count and float(count[0].split()[-1]) >= 1
