"""/api/poll: who may call it (official inngest signer as the client), body rules, GitLab
down -> 503, per-user retries resuming from cursors, sync status and metrics."""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager

import httpx
import pytest
from inngest._internal.net import sign_request as sdk_sign

from app.main import create_app
from gitlab_sim.server import SimulatorServer
from tests.support import (
    FALLBACK_KEY,
    SIGNING_KEY,
    add_user,
    make_settings,
    project_tuple,
    query,
)


@asynccontextmanager
async def client_for(settings):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def signed(body: bytes, key: str = SIGNING_KEY, t: int | None = None) -> dict[str, str]:
    return {
        "X-Inngest-Signature": sdk_sign(body, key, t if t is not None else round(time.time())),
        "Content-Type": "application/json",
    }


def runs(db_url: str) -> int:
    return query(db_url, "SELECT count(*) FROM poll_run")[0][0]


@pytest.fixture
def sqlite_url(tmp_path):
    from app.db.migrate import upgrade_to_head

    url = f"sqlite+aiosqlite:///{tmp_path}/auth.db"
    upgrade_to_head(url)
    return url


async def test_sdk_signed_requests_are_accepted(sqlite_url):
    settings = make_settings(sqlite_url, inngest_signing_key_fallback=FALLBACK_KEY)
    async with client_for(settings) as c:
        for body in (b"", b"{}", b'{ "user_ids" : ["nobody"] }'):
            r = await c.post("/api/poll", content=body, headers=signed(body))
            assert r.status_code == 200, r.text
        # Key rotation: the fallback key is accepted too.
        r = await c.post("/api/poll", content=b"{}", headers=signed(b"{}", FALLBACK_KEY))
        assert r.status_code == 200
        r = await c.post("/api/poll", headers={"Authorization": f"Bearer {SIGNING_KEY}"})
        assert r.status_code == 200
    assert runs(sqlite_url) == 5


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("tampered body", "bad_signature"),
        ("wrong key", "bad_signature"),
        ("stale", "stale_timestamp"),
        ("future", "future_timestamp"),
        ("no t", "missing_timestamp"),
        ("other body", "bad_signature"),
        ("nothing", "missing_credentials"),
        ("bad bearer", "bad_token"),
        ("basic scheme", "wrong_scheme"),
    ],
)
async def test_bad_credentials_are_refused_and_run_nothing(sqlite_url, case, check):
    body = b'{"user_ids": ["a"]}'
    now = round(time.time())
    headers: dict[str, str] = {}
    content = body
    if case == "tampered body":
        headers = signed(body)
        content = b'{"user_ids": ["b"]}'
    elif case == "wrong key":
        headers = signed(body, "signkey-test-" + "00" * 32)
    elif case == "stale":
        headers = signed(body, t=now - 301)
    elif case == "future":
        headers = signed(body, t=now + 301)
    elif case == "no t":
        sig = signed(body)["X-Inngest-Signature"]
        headers = {"X-Inngest-Signature": sig.split("&", 1)[1]}
    elif case == "other body":
        headers = signed(b"{}")
    elif case == "bad bearer":
        headers = {"Authorization": "Bearer not-the-key"}
    elif case == "basic scheme":
        headers = {"Authorization": f"Basic {SIGNING_KEY}"}
    async with client_for(make_settings(sqlite_url)) as c:
        r = await c.post("/api/poll", content=content, headers=headers)
    assert r.status_code == 401
    assert r.headers["x-inngest-no-retry"] == "true"
    assert r.json()["check"] == check
    assert SIGNING_KEY[13:] not in r.text
    assert runs(sqlite_url) == 0


async def test_no_key_configured_refuses_everything_unless_unsigned_allowed(sqlite_url):
    async with client_for(make_settings(sqlite_url, inngest_signing_key=None)) as c:
        r = await c.post("/api/poll", headers={"Authorization": "Bearer "})
        assert r.status_code == 401
        assert r.json()["check"] in ("no_key_configured", "missing_credentials")
        r = await c.post("/api/poll")
        assert r.status_code == 401
    assert runs(sqlite_url) == 0
    unsigned = make_settings(sqlite_url, inngest_signing_key=None, allow_unsigned_polls=True)
    async with client_for(unsigned) as c:
        assert (await c.post("/api/poll")).status_code == 200
    assert runs(sqlite_url) == 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b'{"user_ids": "abc"}', 422, "user_ids"),
        (b'{"user_ids": [1, 2]}', 422, "user_ids"),
        (b'{"user_ids": []}', 422, "user_ids"),
        (b'{"users": ["a"]}', 422, "users"),
        (b"[1, 2]", 422, "object"),
        (b'"text"', 422, "object"),
        (b"\xff\xfe{}", 422, "UTF-8"),
    ],
)
async def test_invalid_bodies_get_clear_4xx(sqlite_url, body, status, fragment):
    async with client_for(make_settings(sqlite_url)) as c:
        r = await c.post(
            "/api/poll", content=body, headers={"Authorization": f"Bearer {SIGNING_KEY}"}
        )
    assert r.status_code == status, r.text
    assert fragment in r.text
    assert runs(sqlite_url) == 0


async def test_oversized_body_is_413_before_anything_else(sqlite_url):
    settings = make_settings(sqlite_url)
    big = json.dumps({"user_ids": ["x" * 100] * 1000}).encode()
    assert len(big) > settings.max_request_body_bytes
    async with client_for(settings) as c:
        r = await c.post("/api/poll", content=big, headers=signed(big))
        assert r.status_code == 413
        # Without a Content-Length header (chunked), the stream is cut at the limit too.

        async def chunks():
            for i in range(0, len(big), 4096):
                yield big[i : i + 4096]

        r = await c.post("/api/poll", content=chunks(), headers=signed(big))
        assert r.status_code == 413
    assert runs(sqlite_url) == 0


def test_gitlab_down_stops_the_run_with_503(db_url):
    with SimulatorServer(seed=5, users=6, projects=2, issues=3, merge_requests=1, notes=1) as sim:
        for i in range(1, 7):
            add_user(db_url, f"u{i}@example.com", sim.token(f"user{i}"), [project_tuple(sim, 2)])
        sim.world.add_fault(kind="status", status=503, path=r"/api/v4/projects/")
        settings = make_settings(
            db_url, sim.url, poll_concurrency=1, gitlab_down_threshold=3, user_sync_attempts=2
        )

        async def go():
            async with client_for(settings) as c:
                return await c.post("/api/poll", headers={"Authorization": f"Bearer {SIGNING_KEY}"})

        import asyncio

        r = asyncio.run(go())
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    s = r.json()
    reasons = [u["reason"] for u in s["users"]]
    assert reasons.count("gitlab_unavailable") == 3  # the rest were not started
    assert s["failed"] == 3 and s["skipped"] == 3 and s["success"] is False
    # The shared error shape: a code and a sentence.
    assert s["error"] == "gitlab_unavailable" and "GitLab" in s["detail"]
    assert query(db_url, 'SELECT count(*) FROM "LastSync"') == [(0,)]
    assert query(db_url, "SELECT count(*) FROM sync_cursor WHERE cursor_at IS NOT NULL") == [(0,)]


def test_manual_refresh_of_a_fresh_user_is_a_success_that_names_the_skip(db_url):
    import asyncio

    with SimulatorServer(seed=8, users=2, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        uid = add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
        settings = make_settings(db_url, sim.url, min_refresh_interval_seconds=3600)
        auth = {"Authorization": f"Bearer {SIGNING_KEY}"}

        async def go():
            async with client_for(settings) as c:
                first = await c.post("/api/poll", json={"user_ids": [uid]}, headers=auth)
                again = await c.post("/api/poll", json={"user_ids": [uid]}, headers=auth)
                return first, again

        first, again = asyncio.run(go())
    assert first.status_code == 200 and first.json()["processed"] == 1
    s = again.json()
    assert again.status_code == 200
    assert s["success"] is True  # skipping a user synced seconds ago is not a failure
    assert (s["processed"], s["skipped"], s["failed"]) == (0, 1, 0)
    assert s["skipped_reasons"] == {"fresh": 1}
    assert [(u["user_id"], u["status"], u["reason"]) for u in s["users"]] == [
        (uid, "skipped", "fresh")
    ]
    assert query(db_url, "SELECT success FROM poll_run ORDER BY started_at") == [(True,), (True,)]


def test_transient_failure_retries_the_user_resuming_from_cursors(db_url):
    import asyncio

    with SimulatorServer(seed=6, users=2, projects=3, issues=5, merge_requests=2, notes=1) as sim:
        uid = add_user(
            db_url,
            "u1@example.com",
            sim.token("user1"),
            [project_tuple(sim, p) for p in (1, 2)],
        )
        # Project 2's issue listing fails more times than one request retries (4 attempts).
        sim.world.add_fault(kind="status", status=502, path=r"/projects/2/issues$", count=4)
        settings = make_settings(db_url, sim.url)

        async def go():
            async with client_for(settings) as c:
                return await c.post("/api/poll", headers={"Authorization": f"Bearer {SIGNING_KEY}"})

        r = asyncio.run(go())
        reqs = sim.world.requests()
    s = r.json()
    user = s["users"][0]
    assert user["user_id"] == uid and user["status"] == "processed", s
    assert user["attempts"] == 2
    # Project 1 synced in the first attempt and was not fetched again.
    p1_lists = [q for q in reqs if q["path"] == "/api/v4/projects/1/issues"]
    assert len(p1_lists) == 1
    assert query(db_url, 'SELECT count(*) FROM "LastSync"') == [(1,)]


def test_sync_status_and_metrics(db_url):
    import asyncio

    with SimulatorServer(seed=7, users=2, projects=3, issues=4, merge_requests=2, notes=1) as sim:
        uid = add_user(
            db_url,
            "u1@example.com",
            sim.token("user1"),
            [project_tuple(sim, p) for p in (1, 2)] + [("999", "Gone", "gone/project")],
        )
        settings = make_settings(db_url, sim.url)

        async def go():
            auth = {"Authorization": f"Bearer {SIGNING_KEY}"}
            async with client_for(settings) as c:
                poll = await c.post("/api/poll", headers=auth)
                status = await c.get("/api/sync-status", headers=auth)
                one = await c.get(f"/api/sync-status?user_id={uid}", headers=auth)
                unauth = await c.get("/api/sync-status")
                signed_get = await c.get("/api/sync-status", headers=signed(b""))
                metrics = await c.get("/metrics")
                ready = await c.get("/readyz")
                return poll, status, one, unauth, signed_get, metrics, ready

        poll, status, one, unauth, signed_get, metrics, ready = asyncio.run(go())
    assert poll.status_code == 200
    assert unauth.status_code == 401 and signed_get.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "database": "ok",
        "schema": "story",
        "schema_detail": "story",
    }
    body = status.json()
    assert body == one.json()
    (user,) = body["users"]
    assert user["last_sync_at"] is None  # one project failed: LastSync held back
    projects = {p["gitlab_project_id"]: p for p in user["projects"]}
    assert projects["1"]["cursor_at"] and projects["2"]["cursor_at"]
    assert projects["999"]["cursor_at"] is None and "404" in projects["999"]["last_error"]
    assert body["recent_runs"]["count"] == 1
    text = metrics.text
    assert 'gitlab_insights_poll_runs_total{result="failure"}' in text
    assert (
        'gitlab_insights_gitlab_requests_total{endpoint="/projects/:id/issues",status="200"}'
        in text
    )
    assert 'gitlab_insights_events_total{action="stored",type="issue"}' in text


def test_forbidden_project_is_reported_loudly_and_keeps_its_cursor(db_url):
    """A peer tool ignores a 403 silently and moves its cursor; we report it and do not."""
    import asyncio

    with SimulatorServer(seed=8, users=2, projects=3, issues=4, merge_requests=2, notes=1) as sim:
        empty = sim.world.create_project("empty/project", members=["user1"])
        uid = add_user(
            db_url,
            "u1@example.com",
            sim.token("user1"),
            [project_tuple(sim, p) for p in (1, 2, empty.id)],
        )
        # A plain 403 (not insufficient_scope) on the listings; the project itself answers.
        sim.world.add_fault(
            kind="status", status=403, forbidden_reason="forbidden", path=r"/projects/2/"
        )
        settings = make_settings(db_url, sim.url)

        async def go():
            async with client_for(settings) as c:
                return await c.post("/api/poll", headers={"Authorization": f"Bearer {SIGNING_KEY}"})

        s = asyncio.run(go()).json()
    (user,) = s["users"]
    assert user["user_id"] == uid and user["status"] == "failed"
    assert [(f["gitlab_project_id"], f["error"], f["status"]) for f in user["failed_projects"]] == [
        ("2", "GitLabForbidden", 403)
    ]
    cursors = dict(query(db_url, "SELECT gitlab_project_id, cursor_at FROM sync_cursor"))
    assert cursors["2"] is None
    assert cursors["1"] is not None and cursors[str(empty.id)] is not None  # empty is fine
    assert user["attempts"] == 1  # a 403 is not transient: not retried


def test_changes_made_during_a_run_are_picked_up_by_the_next(db_url):
    """The original set its watermark at the END of the run and lost changes made meanwhile."""
    import threading

    from tests.support import LiveServer, assert_equal_truth

    with SimulatorServer(seed=9, users=1, projects=1, issues=250, merge_requests=0, notes=0) as sim:
        uid = add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
        # Slow pages: the run lasts long enough to edit items while it is under way.
        sim.world.configure(latency_ms=300)
        with LiveServer(make_settings(db_url, sim.url)) as server:
            t = threading.Thread(target=server.poll)
            t.start()
            deadline = time.monotonic() + 10
            while not sim.world.requests() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            # Edit an item that is on a page not yet read, and one already read.
            w = sim.world
            w.update_issue(1, 1, title="changed during the run (old item)")
            w.update_issue(1, 250, title="changed during the run (new item)")
            t.join()
            sim.world.configure(latency_ms=0)
            assert server.poll().status_code == 200
        assert_equal_truth(db_url, uid, sim, "user1", [1])


async def test_get_poll_for_vercel_cron(sqlite_url):
    async with client_for(make_settings(sqlite_url)) as c:
        r = await c.get(
            "/api/poll",
            headers={"Authorization": f"Bearer {SIGNING_KEY}", "User-Agent": "vercel-cron/1.0"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["trigger"] == "vercel_cron"
        assert (await c.get("/api/poll")).status_code == 401
        r = await c.get("/api/poll", headers=signed(b""))
        assert r.status_code == 200 and r.json()["trigger"] == "api"
    assert [
        t for (t,) in query(sqlite_url, "SELECT trigger FROM poll_run ORDER BY started_at")
    ] == [
        "vercel_cron",
        "api",
    ]


async def test_who_called_is_recorded_apart_from_how_it_authenticated(sqlite_url):
    bearer = {"Authorization": f"Bearer {SIGNING_KEY}"}
    refresh = b'{"user_ids": ["nobody"]}'
    cloud = {"X-CloudScheduler": "true", "User-Agent": "Google-Cloud-Scheduler"}
    builtin = {"X-GitLab-Insights-Trigger": "scheduler"}
    # (headers, body, who, how): the signing key is no caller's name, each sends its own.
    cases = [
        (signed(b"{}"), b"{}", "api", "inngest_signature"),  # a script signing like Inngest
        (signed(refresh), refresh, "manual", "inngest_signature"),
        (bearer, b"", "api", "bearer"),  # curl, a crontab
        ({**bearer, "Content-Type": "application/json"}, refresh, "manual", "bearer"),
        ({**bearer, **cloud}, b"{}", "cloud_scheduler", "bearer"),
        ({**signed(b"{}"), **builtin}, b"{}", "scheduler", "inngest_signature"),
        ({**bearer, "User-Agent": "vercel-cron/1.0"}, b"", "vercel_cron", "bearer"),
    ]
    async with client_for(make_settings(sqlite_url)) as c:
        recorded = {}
        for headers, body, who, how in cases:
            r = await c.post("/api/poll", content=body, headers=headers)
            assert r.status_code == 200, r.text
            answer = r.json()
            assert (answer["trigger"], answer["auth"]) == (who, {"method": how, "email": None})
            recorded[answer["run_id"]] = (who, how)
        listed = (await c.get("/api/runs", headers=bearer)).json()["runs"]
    assert {r["run_id"]: (r["trigger"], r["auth"]["method"]) for r in listed} == recorded
    rows = query(sqlite_url, "SELECT id, trigger, auth_method FROM poll_run")
    assert {run_id: (who, how) for run_id, who, how in rows} == recorded


async def test_an_inngest_executor_call_is_no_poll(sqlite_url):
    # Inngest itself calls /api/inngest; its request body, signed with the right key, is no
    # /api/poll body: refused, nothing runs (so /api/poll never records trigger "inngest").
    body = json.dumps(
        {
            "event": {"name": "inngest/scheduled.timer", "data": {}},
            "events": [{"name": "inngest/scheduled.timer", "data": {}}],
            "ctx": {"run_id": "01H", "attempt": 0, "fn_id": "gitlab-api-polling"},
            "steps": {},
            "use_api": False,
        }
    ).encode()
    async with client_for(make_settings(sqlite_url)) as c:
        r = await c.post("/api/poll", content=body, headers=signed(body))
    assert r.status_code == 422 and r.json()["error"] == "invalid_request"
    assert runs(sqlite_url) == 0
