"""One error body for every 4xx/5xx (`{"error", "detail", ...}`), documented in OpenAPI, and
503 with Retry-After from every endpoint when the database is down (never a 500)."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException

from app import retry
from app.api.errors import ErrorBody
from app.db.migrate import upgrade_to_head
from app.main import create_app
from tests.conftest import _pg_admin, drop_pg_database, new_pg_database
from tests.support import SIGNING_KEY, make_settings

AUTH = {"Authorization": f"Bearer {SIGNING_KEY}"}


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        # The 500 case: answer like uvicorn would instead of re-raising into the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def assert_error_shape(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    ErrorBody.model_validate(body)
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert "Traceback" not in r.text and SIGNING_KEY not in r.text
    return body


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/errors.db"
    upgrade_to_head(url)
    return url


def _app_with_test_routes(settings) -> FastAPI:
    app = create_app(settings)

    async def forbidden() -> None:
        raise HTTPException(403)

    async def limited() -> None:
        raise HTTPException(429, headers={"Retry-After": "7"})

    async def broken() -> None:
        raise RuntimeError("a bug with a secret inside: " + SIGNING_KEY)

    app.add_api_route("/test/403", forbidden)
    app.add_api_route("/test/429", limited)
    app.add_api_route("/test/500", broken)
    return app


async def test_every_error_status_has_the_same_body_shape(sqlite_url) -> None:
    settings = make_settings(sqlite_url, max_request_body_bytes=1024)
    async with serve(_app_with_test_routes(settings)) as c:
        body = assert_error_shape(await c.post("/api/poll"), 401, "unauthorized")
        assert body["check"] == "missing_credentials"
        assert_error_shape(await c.get("/api/sync-status"), 401, "unauthorized")
        assert_error_shape(await c.get("/api/runs"), 401, "unauthorized")
        assert_error_shape(await c.get("/test/403"), 403, "forbidden")
        assert_error_shape(await c.get("/no/such/page"), 404, "not_found")
        r = await c.delete("/api/poll", headers=AUTH)
        assert_error_shape(r, 405, "method_not_allowed")
        assert r.headers["allow"]
        r = await c.post("/api/poll", content=b"{}" + b" " * 2048, headers=AUTH)
        assert_error_shape(r, 413, "body_too_large")
        r = await c.post(
            "/api/poll", content=b"user_ids=a", headers={**AUTH, "Content-Type": "text/plain"}
        )
        assert_error_shape(r, 415, "unsupported_media_type")
        r = await c.post("/api/poll", json={"user_ids": "u1"}, headers=AUTH)
        body = assert_error_shape(r, 422, "invalid_request")
        assert body["errors"][0]["field"] == "user_ids"
        r = await c.post(
            "/api/poll", content=b"{", headers={**AUTH, "Content-Type": "application/json"}
        )
        assert_error_shape(r, 422, "invalid_request")
        # Query validation (FastAPI's own 422) has the same shape.
        body = assert_error_shape(
            await c.get("/api/runs?limit=0", headers=AUTH), 422, "invalid_request"
        )
        assert body["errors"][0]["field"] == "limit"
        r = await c.get("/api/sync-status", params={"user_id": "a\x00b"}, headers=AUTH)
        assert_error_shape(r, 422, "invalid_request")
        r = await c.get("/test/429")
        assert_error_shape(r, 429, "too_many_requests")
        assert r.headers["retry-after"] == "7"
        body = assert_error_shape(await c.get("/test/500"), 500, "internal_error")
        assert "secret" not in body["detail"]


async def test_openapi_documents_the_shared_error_model(sqlite_url) -> None:
    async with serve(create_app(make_settings(sqlite_url))) as c:
        spec = (await c.get("/openapi.json")).json()
    assert set(spec["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}
    ref = "#/components/schemas/ErrorBody"
    expected = {
        ("/api/poll", "post"): {"401", "413", "415", "422"},
        ("/api/poll", "get"): {"401", "413", "422"},
        ("/api/sync-status", "get"): {"401", "422", "503"},
        ("/api/runs", "get"): {"401", "422", "503"},
    }
    for (path, method), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        for status in statuses:
            content = responses[status]["content"]["application/json"]
            assert content["schema"]["$ref"] == ref, (path, method, status)
            assert content["example"]["error"], (path, method, status)
    # /api/poll's 503 is the run summary, which carries the same `error` and `detail`.
    summary = spec["components"]["schemas"]["PollSummary"]["properties"]
    assert {"error", "detail", "trigger"} <= set(summary)
    assert "Retry-After" in spec["paths"]["/api/poll"]["post"]["responses"]["503"]["headers"]


# --- the database down --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def breakable_db(request, tmp_path):
    """(url, make_unreachable): a migrated database and a coroutine function that takes it
    away mid-run (PostgreSQL: dropped; SQLite: its directory removed, the pool emptied)."""
    if request.param == "sqlite":
        folder = tmp_path / "db"
        folder.mkdir()
        url = f"sqlite+aiosqlite:///{folder}/gone.db"
        upgrade_to_head(url)

        async def take_away(app: FastAPI) -> None:
            await app.state.runtime.engine.dispose()
            shutil.rmtree(folder)

        yield url, take_away
    else:
        url = new_pg_database(migrated=True)

        async def take_away(app: FastAPI) -> None:
            name = url.rsplit("/", 1)[1]
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        try:
            yield url, take_away
        finally:
            drop_pg_database(url)


async def _assert_all_unavailable(c: httpx.AsyncClient) -> None:
    for method, path in (
        ("GET", "/api/sync-status"),
        ("GET", "/api/runs"),
        ("POST", "/api/poll"),
        ("GET", "/api/poll"),
        ("GET", "/readyz"),
    ):
        r = await c.request(method, path, headers=AUTH)
        assert r.status_code == 503, (method, path, r.status_code, r.text[:300])
        assert int(r.headers["retry-after"]) > 0, (method, path)
        body = r.json()
        assert body["error"] == "database_unavailable", (method, path, body)
        assert isinstance(body["detail"], str) and "Traceback" not in r.text
    assert (await c.get("/healthz")).status_code == 200
    assert (await c.get("/metrics")).status_code == 200


async def test_database_dropped_mid_run_answers_503_everywhere(breakable_db) -> None:
    url, take_away = breakable_db
    app = create_app(make_settings(url, db_pool_timeout=5))
    async with serve(app) as c:
        for path in ("/api/sync-status", "/api/runs", "/readyz"):
            assert (await c.get(path, headers=AUTH)).status_code == 200, path
        await take_away(app)
        await _assert_all_unavailable(c)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_database_unreachable_from_the_start_answers_503(kind, tmp_path) -> None:
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/missing-dir/x.db"
    else:
        # A port nobody listens on: the connection is refused.
        url = f"postgresql+asyncpg://gi:gi@127.0.0.1:9/gi_{uuid.uuid4().hex[:6]}"
    async with serve(create_app(make_settings(url, db_pool_timeout=5))) as c:
        await _assert_all_unavailable(c)


async def test_the_built_in_scheduler_still_reports_what_went_wrong(sqlite_url, tmp_path) -> None:
    """app/scheduler/runner.py reads `error` (else `detail`) of an error body: with the
    shared shape it reports the code of a refused call and of a run that could not run."""
    from app.scheduler.config import load, locate
    from app.scheduler.runner import CronSchedule, PollScheduler

    async def no_sleep(_seconds: float) -> None:
        return None

    async def fire(app: FastAPI, key: str):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport) as client:
                sched = PollScheduler(
                    job=load(locate()),
                    schedule=CronSchedule("*/10 * * * *"),
                    url="http://testserver/api/poll",
                    signing_key=key,
                    client=client,
                    sleep=no_sleep,
                )
                return await sched.fire_once()

    refused = await fire(create_app(make_settings(sqlite_url)), "signkey-test-" + "0b" * 32)
    assert refused is not None and refused.status_code == 401 and refused.attempts == 1
    assert refused.error == "HTTP 401: unauthorized"

    down_url = f"sqlite+aiosqlite:///{tmp_path}/missing-dir/x.db"
    with retry.recorded_waits() as waits:  # the scheduler's retries of a 503, not slept
        down = await fire(create_app(make_settings(down_url)), SIGNING_KEY)
    assert waits, "a 503 is retried"
    assert down is not None and down.status_code == 503
    assert down.error == "HTTP 503: database_unavailable"
