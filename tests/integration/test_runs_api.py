"""GET /api/runs: the run history, newest first, a page at a time, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from app.db import repository as repo
from app.db.engine import create_engine, create_sessionmaker
from app.main import create_app
from app.settings import load_settings
from tests.support import SIGNING_KEY, make_settings

AUTH = {"Authorization": f"Bearer {SIGNING_KEY}"}
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


async def _seed(db_url: str) -> None:
    engine = create_engine(load_settings(database_url=db_url))
    try:
        async with create_sessionmaker(engine)() as s, s.begin():
            # r1..r5, one minute apart; r3 and r3b start at the same instant (ties by id).
            starts = {"r1": 0, "r2": 1, "r3": 2, "r3b": 2, "r4": 3, "r5": 4}
            for run_id, minute in starts.items():
                await repo.create_poll_run(s, run_id, "scheduler", T0 + timedelta(minutes=minute))
            await repo.finish_poll_run(
                s,
                "r2",
                finished_at=T0 + timedelta(minutes=1, seconds=3),
                success=False,
                status_code=503,
                total=0,
                processed=0,
                failed=0,
                skipped=0,
                skipped_reasons={},
                events_stored=0,
                events_updated=0,
                error="database_unavailable",
            )
            await repo.finish_poll_run(
                s,
                "r4",
                finished_at=T0 + timedelta(minutes=3, milliseconds=1500),
                success=True,
                status_code=200,
                total=3,
                processed=2,
                failed=0,
                skipped=1,
                skipped_reasons={"no_token": 1},
                events_stored=40,
                events_updated=2,
                error=None,
            )
    finally:
        await engine.dispose()


async def test_runs_are_listed_newest_first_page_by_page(db_url) -> None:
    await _seed(db_url)
    app = create_app(make_settings(db_url))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/api/runs")).status_code == 401
            # A run made through the API is recorded with its trigger and status code.
            assert (await c.post("/api/poll", headers=AUTH)).status_code == 200

            seen: list[dict] = []
            cursor = None
            pages = 0
            while True:
                params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
                r = await c.get("/api/runs", params=params, headers=AUTH)
                assert r.status_code == 200, r.text
                page = r.json()
                assert len(page["runs"]) <= 2
                seen += page["runs"]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            everything = (await c.get("/api/runs", headers=AUTH)).json()

            import base64

            for raw in (b"not-a-cursor", b"0001-01-01T00:00:00+01:00|x", b"\xff|x"):
                cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
                bad = await c.get("/api/runs", params={"cursor": cursor}, headers=AUTH)
                assert bad.status_code == 422, (raw, bad.text)
                assert bad.json()["error"] == "invalid_request"
            bad = await c.get("/api/runs", params={"cursor": "a"}, headers=AUTH)
            assert bad.status_code == 422

    assert pages == 4
    assert everything["next_cursor"] is None and everything["runs"] == seen
    ids = [r["run_id"] for r in seen]
    api_run = ids[0]  # the newest: made just now
    assert ids[1:] == ["r5", "r4", "r3b", "r3", "r2", "r1"]
    by_id = {r["run_id"]: r for r in seen}
    assert by_id[api_run]["trigger"] == "api"
    assert by_id[api_run]["status_code"] == 200 and by_id[api_run]["success"] is True
    assert by_id["r4"] | {"started_at": None, "finished_at": None} == {
        "run_id": "r4",
        "trigger": "scheduler",
        "auth": None,
        "started_at": None,
        "finished_at": None,
        "duration_ms": 1500,
        "success": True,
        "status_code": 200,
        "total": 3,
        "processed": 2,
        "failed": 0,
        "skipped": 1,
        "skipped_reasons": {"no_token": 1},
        "events_stored": 40,
        "events_updated": 2,
        "error": None,
    }
    assert datetime.fromisoformat(by_id["r4"]["started_at"]) == T0 + timedelta(minutes=3)
    assert by_id["r2"]["error"] == "database_unavailable" and by_id["r2"]["status_code"] == 503
    # Still running (or crashed): no end, no duration.
    assert by_id["r5"]["finished_at"] is None and by_id["r5"]["duration_ms"] is None
