"""/api/inngest driven exactly as Inngest drives it, without an Inngest server.

A small executor in this file plays Inngest: it POSTs the SDK's request body (event, events,
ctx {run_id, attempt, max_attempts, stack...}, steps) with fnId/stepId query parameters,
signs it with the SDK's own `sign_request`, checks the SDK's signed answers, memoizes step
results from 206 answers and re-invokes until the run completes or fails, and retries the
way Inngest does (StepError -> same step, next attempt; 500 -> next attempt unless
x-inngest-no-retry). Events the fan-out sends go to a local fake event API (never Inngest
Cloud); the executor turns each into a gitlab-user-sync run against the GitLab simulator
and a real database, and the Event table must equal the simulator's ground truth.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from inngest._internal import server_lib
from inngest._internal.net import sign_request, validate_response_sig
from loguru import logger

from app.db.migrate import upgrade_to_head
from app.db.models import Event, LastSync, PollRun
from app.jobs import inngest_app
from app.main import create_app
from app.settings import Settings, load_settings
from app.sync.deps import SyncDeps
from app.sync.lease import UserLease
from gitlab_sim.expected import expected_events as oracle_events
from gitlab_sim.server import SimulatorServer
from tests.support import add_user

SIGNING_KEY = "signkey-test-" + "1a" * 32
FALLBACK_KEY = "signkey-test-" + "2b" * 32

EVENT_KEY = "test-event-key"
APP_URL = "https://insights.example.com/api/inngest"
POLLING = f"{inngest_app.APP_ID}-{inngest_app.POLLING_FN_ID}"
USER_SYNC = f"{inngest_app.APP_ID}-{inngest_app.USER_SYNC_FN_ID}"
POLLING_FAILURE = f"{POLLING}-failure"

# Every variable the SDK reads on its own: the tests decide them all.
_SDK_ENV = (
    "INNGEST_API_BASE_URL",
    "INNGEST_BASE_URL",
    "INNGEST_DEV",
    "INNGEST_ENABLE_UNAUTHED_SYNC",
    "INNGEST_ENV",
    "INNGEST_EVENT_API_BASE_URL",
    "INNGEST_EVENT_KEY",
    "INNGEST_SERVE_ORIGIN",
    "INNGEST_SERVE_PATH",
    "INNGEST_SIGNING_KEY",
    "INNGEST_SIGNING_KEY_FALLBACK",
    "INNGEST_STREAMING",
)


# --- a fake Inngest API on 127.0.0.1 -------------------------------------------------------


class FakeInngestAPI:
    """Records what the SDK sends to Inngest: events (POST /e/<key>) and syncs (/fn/register)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                body = json.loads(raw) if raw else None
                with fake.lock:
                    fake.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                if self.path.startswith("/e/"):
                    answer: dict[str, Any] = {
                        "ids": [e.get("id") or uuid.uuid4().hex for e in body],
                        "status": 200,
                    }
                elif self.path.startswith("/fn/register"):
                    answer = {"ok": True, "modified": True}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                out = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def sent_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for r in self.requests if r["path"].startswith("/e/") for e in r["body"]]

    def event_posts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["path"].startswith("/e/")]


@pytest.fixture
def fake_inngest(monkeypatch) -> Iterator[FakeInngestAPI]:
    fake = FakeInngestAPI()
    fake.thread.start()
    for name in _SDK_ENV:
        monkeypatch.delenv(name, raising=False)
    # Both the REST API and the event API of the SDK point here, never at inngest.com.
    monkeypatch.setenv("INNGEST_BASE_URL", fake.url)
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


# --- the executor ----------------------------------------------------------------------------


def make_event(name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "data": data or {},
        "id": uuid.uuid4().hex,
        "ts": int(time.time() * 1000),
        "user": {},
        "v": "1",
    }


def cron_event(cron: str = "*/10 * * * *") -> dict[str, Any]:
    return make_event("inngest/scheduled.timer", {"cron": cron})


@dataclass
class RunResult:
    status: str  # "completed" or "failed"
    output: Any
    responses: list[httpx.Response] = field(default_factory=list)
    steps: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""

    def ops(self) -> list[str]:
        out = []
        for r in self.responses:
            if r.status_code == 206:
                out.extend(op["op"] for op in r.json())
            else:
                out.append(str(r.status_code))
        return out


class Executor:
    """Inngest's side of the HTTP protocol, for one app under test."""

    def __init__(self, http: httpx.AsyncClient, key: str = SIGNING_KEY) -> None:
        self.http = http
        self.key = key

    async def call(
        self,
        fn_id: str,
        event: dict[str, Any],
        *,
        run_id: str,
        attempt: int = 0,
        steps: dict[str, Any] | None = None,
        step_id: str = "step",
        max_attempts: int = inngest_app.RETRIES + 1,
    ) -> httpx.Response:
        steps = steps or {}
        body = {
            "event": event,
            "events": [event],
            "steps": steps,
            "ctx": {
                "attempt": attempt,
                "disable_immediate_execution": False,
                "env": "production",
                "fn_id": fn_id,
                "max_attempts": max_attempts,
                "run_id": run_id,
                "step_id": step_id,
                "stack": {"stack": list(steps), "current": len(steps)},
                "use_api": False,
            },
            "use_api": False,
            "version": 1,
        }
        raw = json.dumps(body).encode()
        res = await self.http.post(
            "/api/inngest",
            params={"fnId": fn_id, "stepId": step_id},
            content=raw,
            headers={
                "content-type": "application/json",
                "x-inngest-signature": sign_request(raw, self.key),
                "x-inngest-server-kind": "cloud",
                "x-inngest-req-version": "1",
            },
        )
        # The SDK signs every answer to a signed request; Inngest checks it, so do we.
        assert res.headers.get("x-inngest-sdk", "").startswith("inngest-py:v0.5.19")
        assert (
            validate_response_sig(
                body=res.content,
                headers={k.lower(): v for k, v in res.headers.items()},
                mode=server_lib.ServerKind.CLOUD,
                signing_key=self.key,
            )
            == self.key
        )
        return res

    async def run(
        self, fn_id: str, event: dict[str, Any], *, retries: int = inngest_app.RETRIES
    ) -> RunResult:
        """Drive one run to its end: memoize steps, follow plans, retry like Inngest."""
        run_id = uuid.uuid4().hex
        result = RunResult(status="running", output=None, run_id=run_id)
        attempt, step_id = 0, "step"
        for _ in range(200):
            res = await self.call(
                fn_id,
                event,
                run_id=run_id,
                attempt=attempt,
                steps=result.steps,
                step_id=step_id,
                max_attempts=retries + 1,
            )
            result.responses.append(res)
            step_id = "step"
            if res.status_code == 200:
                result.status, result.output = "completed", res.json()
                return result
            if res.status_code == 206:
                for op in res.json():
                    kind = op["op"]
                    if kind == "StepRun":
                        result.steps[op["id"]] = {"data": op.get("data")}
                        attempt = 0  # attempts count per step
                    elif kind == "StepError":
                        attempt += 1  # Inngest retries the same step
                    elif kind == "StepFailed":
                        result.steps[op["id"]] = {"error": op["error"]}
                        attempt = 0
                    elif kind == "StepPlanned":
                        step_id = op["id"]
                    else:
                        raise AssertionError(f"unexpected opcode {kind}")
                continue
            if res.status_code == 500:
                no_retry = res.headers.get("x-inngest-no-retry") == "true"
                if no_retry or attempt >= retries:
                    result.status, result.output = "failed", res.json()
                    return result
                attempt += 1
                continue
            raise AssertionError(f"unexpected answer {res.status_code}: {res.text}")
        raise AssertionError("run did not finish")


# --- app and world ---------------------------------------------------------------------------


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://insights.test") as c:
            yield app, c


def inngest_settings(db_url: str, gitlab_url: str = "http://127.0.0.1:9", **kw: Any) -> Settings:
    """Cloud mode with a signing key; zero sleeps; the simulator as GitLab."""
    base: dict[str, Any] = {
        "database_url": db_url,
        "gitlab_instance_url": gitlab_url,
        "inngest_signing_key": SIGNING_KEY,
        "inngest_signing_key_fallback": None,
        "inngest_event_key": EVENT_KEY,
        "inngest_dev": None,
        "gitlab_backoff_base": 0,
        "gitlab_backoff_max": 0,
        "user_retry_backoff_base": 0,
        "min_refresh_interval_seconds": 0,
        "sync_backfill_days": 0,
        "user_sync_attempts": 1,
        "gitlab_max_attempts": 2,
        "gitlab_read_timeout": 5,
    }
    base.update(kw)
    return load_settings(**base)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/inngest.db"
    upgrade_to_head(url)
    return url


async def seed_user(
    app: FastAPI, email: str, token: str | None, projects: list[tuple[str, str, str]]
) -> str:
    return add_user(app.state.settings.database_url, email, token, projects)


async def seed_world(app: FastAPI, sim: SimulatorServer) -> dict[str, tuple[str, list[int]]]:
    """Every simulated user with every project they can see: {user_id: (username, [pid])}."""
    world = sim.world
    out: dict[str, tuple[str, list[int]]] = {}
    for user in sorted(world.users.values(), key=lambda u: u.id):
        visible = [p for p in world.projects.values() if world.can_see_project(p, user)]
        uid = await seed_user(
            app,
            f"{user.username}@example.com",
            sim.token(user.username),
            [(str(p.id), p.name, p.path_with_namespace) for p in visible],
        )
        out[uid] = (user.username, [p.id for p in visible])
    return out


_COMPARED = ("gitlabEventId", "type", "title", "body", "author", "authorAvatar", "gitlabUrl")


def _iso(value: dt.datetime) -> str:
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.microsecond // 1000:03d}Z"


async def stored_events(app: FastAPI, user_id: str) -> list[dict[str, Any]]:
    async with app.state.sessionmaker() as s:
        rows = (await s.execute(sa.select(Event).where(Event.userId == user_id))).scalars().all()
    return sorted(
        (
            {
                **{f: getattr(e, f) for f in _COMPARED},
                "labels": list(e.labels or []),
                "createdAt": _iso(e.createdAt),
            }
            for e in rows
        ),
        key=lambda e: e["gitlabEventId"],
    )


def expected_events(sim: SimulatorServer, username: str, pids: list[int]) -> list[dict[str, Any]]:
    out = []
    for pid in pids:
        for e in oracle_events(sim.world, username, pid):
            out.append(
                {**{f: e[f] for f in _COMPARED}, "labels": e["labels"], "createdAt": e["createdAt"]}
            )
    return sorted(out, key=lambda e: e["gitlabEventId"])


async def run_fanned_out(
    executor: Executor, fake: FakeInngestAPI, seen: int = 0
) -> list[RunResult]:
    """Run gitlab-user-sync for every user.sync event the app sent since `seen`."""
    events = [e for e in fake.sent_events()[seen:] if e["name"] == inngest_app.USER_SYNC_EVENT]
    return [await executor.run(USER_SYNC, e) for e in events]


# --- configuration, introspection and signatures ---------------------------------------------


@pytest.mark.parametrize(
    ("keys", "mounted", "warning"),
    [
        ({"inngest_signing_key": None, "inngest_event_key": None}, False, None),
        # A signing key only signs /api/poll (the built-in scheduler, curl): no Inngest app.
        ({"inngest_event_key": None}, False, None),
        ({}, True, None),  # Inngest Cloud: the event key and the signing key
        ({"inngest_signing_key": None}, False, "INNGEST_SIGNING_KEY is not"),
        ({"inngest_signing_key": None, "inngest_event_key": None, "inngest_dev": "1"}, True, None),
    ],
    ids=["nothing", "signing key only", "cloud", "event key only", "dev server"],
)
async def test_the_inngest_app_is_served_only_where_it_is_meant_to_run(
    sqlite_url, fake_inngest, keys, mounted, warning
) -> None:
    settings = inngest_settings(sqlite_url, **keys)
    records: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG"
    )
    try:
        assert inngest_app.mount_inngest(FastAPI(), settings) is mounted
    finally:
        logger.remove(sink)
    # One line either way; a warning only where the app is wanted and cannot run.
    assert len([m for _, m in records if "/api/inngest" in m]) == 1, records
    warnings = [m for level, m in records if level == "WARNING"]
    if warning is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and warning in warnings[0], warnings
    async with running_app(settings) as (app, http):
        assert ("/api/inngest" in app.openapi()["paths"]) is mounted
        assert ((await http.get("/api/inngest")).status_code != 404) is mounted
        if settings.inngest_signing_key is not None:  # /api/poll takes the key either way
            signature = {"x-inngest-signature": sign_request(b"{}", SIGNING_KEY)}
            r = await http.post("/api/poll", content=b"{}", headers=signature)
            assert r.status_code == 200, r.text


def test_sdk_missing_leaves_the_service_running(sqlite_url, fake_inngest, monkeypatch) -> None:
    # INNGEST_SIGNING_KEY also guards /api/poll; without the SDK only /api/inngest goes.
    monkeypatch.setitem(sys.modules, "inngest.fast_api", None)
    app = create_app(inngest_settings(sqlite_url))
    paths = app.openapi()["paths"]
    assert "/api/poll" in paths and "/api/inngest" not in paths


@pytest.mark.parametrize(
    ("value", "dev", "url"),
    [
        (None, False, None),
        ("0", False, None),
        ("false", False, None),
        ("1", True, None),
        ("true", True, None),
        ("http://127.0.0.1:8288", True, "http://127.0.0.1:8288"),
        ("localhost:8288", True, "http://localhost:8288"),
    ],
)
def test_inngest_dev_is_read_like_the_sdk(sqlite_url, value, dev, url) -> None:
    settings = inngest_settings(sqlite_url, inngest_dev=value)
    assert inngest_app.dev_mode(settings) is dev
    assert inngest_app.dev_server_url(settings) == url


async def test_signed_introspection_and_in_band_sync_list_both_functions(
    sqlite_url, fake_inngest
) -> None:
    settings = inngest_settings(sqlite_url, poll_concurrency=7, inngest_polling_cron="*/5 * * * *")
    async with running_app(settings) as (_, http):
        res = await http.get(
            "/api/inngest", headers={"x-inngest-signature": sign_request(b"", SIGNING_KEY)}
        )
        assert res.status_code == 200
        inspection = res.json()
        assert inspection["authentication_succeeded"] is True
        assert inspection["app_id"] == "gitlab-insights"
        assert inspection["mode"] == "cloud"
        assert inspection["function_count"] == 2
        assert inspection["has_event_key"] is True
        assert inspection["api_origin"].startswith(fake_inngest.url)

        body = json.dumps({"url": APP_URL}).encode()
        res = await http.put(
            "/api/inngest",
            content=body,
            headers={
                "content-type": "application/json",
                "x-inngest-signature": sign_request(body, SIGNING_KEY),
                "x-inngest-sync-kind": "in_band",
                "x-inngest-server-kind": "cloud",
            },
        )
        assert res.status_code == 200, res.text
        assert res.headers["x-inngest-sync-kind"] == "in_band"
        sync = res.json()
    assert fake_inngest.requests == []  # in-band: nothing sent anywhere
    assert sync["app_id"] == "gitlab-insights" and sync["url"] == APP_URL
    fns = {f["id"]: f for f in sync["functions"]}
    assert set(fns) == {POLLING, POLLING_FAILURE, USER_SYNC}

    polling = fns[POLLING]
    assert polling["triggers"] == [
        {"cron": "*/5 * * * *"},
        {"event": "gitlab-insights/poll.requested"},
    ]
    assert polling["steps"]["step"]["retries"] == {"attempts": 3}
    assert polling["steps"]["step"]["runtime"]["url"] == f"{APP_URL}?fnId={POLLING}&stepId=step"

    failure = fns[POLLING_FAILURE]
    assert failure["triggers"] == [
        {
            "event": "inngest/function.failed",
            "expression": f"event.data.function_id == '{POLLING}'",
        }
    ]

    user_sync = fns[USER_SYNC]
    assert user_sync["triggers"] == [{"event": "gitlab-insights/user.sync"}]
    assert user_sync["steps"]["step"]["retries"] == {"attempts": 3}
    assert user_sync["concurrency"] == [{"limit": 7}, {"key": "event.data.user_id", "limit": 1}]


async def test_unsigned_and_badly_signed_calls_are_refused(sqlite_url, fake_inngest) -> None:
    settings = inngest_settings(sqlite_url)
    event = cron_event()
    body = json.dumps(
        {
            "event": event,
            "events": [event],
            "steps": {},
            "ctx": {
                "attempt": 0,
                "disable_immediate_execution": False,
                "run_id": "r1",
                "stack": {"stack": []},
            },
            "use_api": False,
        }
    ).encode()
    params = {"fnId": POLLING, "stepId": "step"}
    other_key = "signkey-test-" + "0b" * 32
    now = int(time.time())
    valid = sign_request(body, SIGNING_KEY)
    bad = {
        "unsigned": {},
        "wrong key": {"x-inngest-signature": sign_request(body, other_key)},
        "tampered": {"x-inngest-signature": valid.replace("s=", "s=0")[:-1]},
        # The SDK alone accepts these two (it checks no age and needs no t): we do not.
        "stale": {"x-inngest-signature": sign_request(body, SIGNING_KEY, now - 3600)},
        "no timestamp": {"x-inngest-signature": "s=" + valid.split("s=")[1]},
        "future": {"x-inngest-signature": sign_request(body, SIGNING_KEY, now + 3600)},
    }
    async with running_app(settings) as (app, http):
        for name, headers in bad.items():
            res = await http.post("/api/inngest", params=params, content=body, headers=headers)
            assert res.status_code == 401, name
        # Signed over other bytes than those sent.
        res = await http.post(
            "/api/inngest",
            params=params,
            content=body.replace(b'"r1"', b'"r2"'),
            headers={"x-inngest-signature": valid},
        )
        assert res.status_code == 401

        assert (await http.get("/api/inngest")).status_code == 401
        stale_get = {"x-inngest-signature": sign_request(b"", SIGNING_KEY, now - 3600)}
        assert (await http.get("/api/inngest", headers=stale_get)).status_code == 401

        sync_body = json.dumps({"url": APP_URL}).encode()
        res = await http.put(
            "/api/inngest", content=sync_body, headers={"x-inngest-sync-kind": "in_band"}
        )
        assert res.status_code == 401
        # Unsigned out-of-band sync would re-register the app at the caller's Host: opt-in only.
        res = await http.put("/api/inngest", headers={"host": "attacker.example"})
        assert res.status_code == 401
        assert fake_inngest.requests == []

        # Nothing ran: no run recorded, no event sent.
        async with app.state.sessionmaker() as s:
            assert (await s.execute(sa.select(sa.func.count()).select_from(PollRun))).scalar() == 0


async def test_refused_unsigned_calls_are_warnings_not_errors(sqlite_url, fake_inngest) -> None:
    """Scanners send unsigned GET/PUT /api/inngest all day: the SDK's `unauthorized` lines
    are demoted to WARNING; the SDK's other errors stay ERROR."""
    records: list[tuple[str, str]] = []
    async with running_app(inngest_settings(sqlite_url)) as (_app, http):
        sink = logger.add(
            lambda m: records.append((m.record["level"].name, m.record["message"])),
            level="DEBUG",
        )
        try:
            assert (await http.get("/api/inngest")).status_code == 401
            assert (await http.put("/api/inngest")).status_code == 401
            assert (await http.post("/api/inngest", params={"fnId": POLLING})).status_code == 401
            inngest_app.sdk_logger().error("a real SDK error")
        finally:
            logger.remove(sink)
    refused = [(level, msg) for level, msg in records if msg.startswith("unauthorized:")]
    assert len(refused) == 3, records
    assert {level for level, _ in refused} == {"WARNING"}
    assert ("ERROR", "a real SDK error") in records
    assert not [r for r in records if r[0] == "ERROR" and r[1] != "a real SDK error"], records


async def test_fallback_signing_key_is_accepted(sqlite_url, fake_inngest) -> None:
    settings = inngest_settings(
        sqlite_url,
        inngest_signing_key="signkey-test-" + "0c" * 32,
        inngest_signing_key_fallback=FALLBACK_KEY,
    )
    async with running_app(settings) as (_, http):
        run = await Executor(http, key=FALLBACK_KEY).run(POLLING, cron_event())
    assert run.status == "completed"
    assert run.output["users"] == 0


async def test_dev_mode_serves_unsigned_and_syncs_with_the_dev_server(
    sqlite_url, fake_inngest
) -> None:
    settings = inngest_settings(sqlite_url, inngest_signing_key=None, inngest_dev=fake_inngest.url)
    async with running_app(settings) as (_, http):
        res = await http.get("/api/inngest")
        assert res.status_code == 200 and res.json()["mode"] == "dev"
        # What the dev server does on `inngest-cli dev -u .../api/inngest`: an unsigned PUT.
        res = await http.put("/api/inngest", headers={"x-inngest-server-kind": "dev"})
        assert res.status_code == 200, res.text
    [register] = [r for r in fake_inngest.requests if r["path"].startswith("/fn/register")]
    assert register["body"]["appname"] == "gitlab-insights"
    assert {f["id"] for f in register["body"]["functions"]} == {POLLING, POLLING_FAILURE, USER_SYNC}


# --- the job against the simulator and a real database ----------------------------------------


async def test_cron_fan_out_and_user_syncs_match_ground_truth(db_url, fake_inngest, monkeypatch):
    monkeypatch.setattr(inngest_app, "FANOUT_BATCH_SIZE", 2)
    with SimulatorServer(seed=11, users=5, projects=4, issues=12, merge_requests=6, notes=3) as sim:
        settings = inngest_settings(db_url, sim.url, user_sync_attempts=2)
        async with running_app(settings) as (app, http):
            users = await seed_world(app, sim)
            executor = Executor(http)

            poll = await executor.run(POLLING, cron_event())
            assert poll.status == "completed", poll.output
            # One step lists the users, then one send step per batch of 2, then the result.
            assert poll.ops() == ["StepRun", "StepRun", "StepRun", "StepRun", "200"]
            assert poll.output == {"trigger": "cron", "users": 5, "events_sent": 5, "batches": 3}
            posts = fake_inngest.event_posts()
            assert [len(p["body"]) for p in posts] == [2, 2, 1]
            assert all(p["path"] == f"/e/{EVENT_KEY}" for p in posts)
            sent = fake_inngest.sent_events()
            assert sorted(e["data"]["user_id"] for e in sent) == sorted(users)
            assert all(
                e["name"] == inngest_app.USER_SYNC_EVENT
                and e["data"]["manual"] is False
                and e["data"]["trigger"] == "cron"
                and e["id"] == f"{poll.run_id}-{e['data']['user_id']}"
                for e in sent
            )

            runs = await run_fanned_out(executor, fake_inngest)
            assert [r.status for r in runs] == ["completed"] * 5
            assert all(r.ops() == ["200"] for r in runs)  # no step: one request per user
            assert {r.output["status"] for r in runs} == {"processed"}

            for uid, (username, pids) in users.items():
                got = await stored_events(app, uid)
                assert got == expected_events(sim, username, pids), username
                assert got  # the world gives every user something to see

            async with app.state.sessionmaker() as s:
                last = (await s.execute(sa.select(LastSync.userId))).scalars().all()
                poll_runs = (await s.execute(sa.select(PollRun))).scalars().all()
            assert sorted(last) == sorted(users)
            assert len(poll_runs) == 5
            # Who called (Inngest) and how (its signature, verified) are both recorded.
            assert {(r.trigger, r.auth_method, r.auth_email) for r in poll_runs} == {
                ("inngest", "inngest_signature", None)
            }
            assert sorted(r.id for r in poll_runs) == sorted(r.output["run_id"] for r in runs)

            # New activity in GitLab, next cron tick: only the change is fetched and stored.
            username = users[next(iter(users))][0]
            first_pid = users[next(iter(users))][1][0]
            sim.world.create_issue(first_pid, "Brand new issue", author=username)
            seen = len(fake_inngest.sent_events())
            assert (await executor.run(POLLING, cron_event())).status == "completed"
            again = await run_fanned_out(executor, fake_inngest, seen)
            assert {r.output["status"] for r in again} == {"processed"}
            assert sum(r.output["stored"] for r in again) >= 1
            for uid, (username, pids) in users.items():
                assert await stored_events(app, uid) == expected_events(sim, username, pids)


async def test_manual_refresh_event_fans_out_requested_users(db_url, fake_inngest) -> None:
    with SimulatorServer(seed=3, users=2, projects=2, issues=5, merge_requests=2, notes=1) as sim:
        settings = inngest_settings(db_url, sim.url, min_refresh_interval_seconds=300)
        async with running_app(settings) as (app, http):
            users = await seed_world(app, sim)
            lonely = await seed_user(app, "lonely@example.com", "tok", [])
            first, second = sorted(users)
            executor = Executor(http)
            event = make_event(
                inngest_app.POLL_REQUESTED_EVENT,
                {"user_ids": [first, "no-such-user", lonely, first]},
            )
            poll = await executor.run(POLLING, event)
            assert poll.status == "completed"
            assert poll.output == {
                "trigger": "manual",
                "users": 1,
                "events_sent": 1,
                "batches": 1,
                "not_found": ["no-such-user"],
                "no_projects": [lonely],
            }
            [sent] = fake_inngest.sent_events()
            assert sent["data"]["user_id"] == first and sent["data"]["manual"] is True

            [run] = await run_fanned_out(executor, fake_inngest)
            assert run.output["status"] == "processed" and run.output["manual"] is True
            username, pids = users[first]
            assert await stored_events(app, first) == expected_events(sim, username, pids)
            assert await stored_events(app, second) == []

            # A second manual refresh right away: the same rule as /api/poll, "fresh".
            again = await executor.run(USER_SYNC, sent)
            assert again.status == "completed"
            assert again.output["status"] == "skipped" and again.output["reason"] == "fresh"

            # Bad event data can never succeed: no retry.
            bad = await executor.run(
                POLLING, make_event(inngest_app.POLL_REQUESTED_EVENT, {"user_ids": "everyone"})
            )
            assert bad.status == "failed" and bad.ops() == ["500"]
            assert bad.responses[0].headers["x-inngest-no-retry"] == "true"
            assert bad.output["name"] == "NonRetriableError"


async def test_failing_step_is_retried_then_fails_and_on_failure_logs(
    sqlite_url, fake_inngest, monkeypatch
) -> None:
    real = inngest_app.list_targets
    calls = {"n": 0}
    failures = {"left": 1}

    async def flaky(deps, user_ids):
        calls["n"] += 1
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionError("database went away")
        return await real(deps, user_ids)

    monkeypatch.setattr(inngest_app, "list_targets", flaky)
    settings = inngest_settings(sqlite_url)
    async with running_app(settings) as (_, http):
        executor = Executor(http)
        run = await executor.run(POLLING, cron_event())
        assert run.status == "completed"
        # The step errored (206 StepError, retriable), Inngest re-ran it on attempt 1.
        assert run.ops() == ["StepError", "StepRun", "200"]
        first = run.responses[0]
        assert first.status_code == 206 and "x-inngest-no-retry" not in first.headers
        [op] = first.json()
        assert op["error"]["name"] == "ConnectionError"
        assert calls["n"] == 2

        # Failing on every attempt: StepError x3, then StepFailed on the last attempt; the
        # memoized error then fails the function for good (500, no retry).
        failures["left"] = 100
        run = await executor.run(POLLING, cron_event())
        assert run.status == "failed"
        assert run.ops() == ["StepError", "StepError", "StepError", "StepFailed", "500"]
        assert run.responses[-1].headers["x-inngest-no-retry"] == "true"
        # The memoized error keeps the step's error name; the code says where it came from.
        assert run.output["code"] == "step_errored"
        assert run.output["name"] == "ConnectionError"

        # Inngest then runs the on-failure function with inngest/function.failed.
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
        try:
            failed = make_event(
                "inngest/function.failed",
                {
                    "function_id": POLLING,
                    "run_id": run.run_id,
                    "error": {"name": "StepError", "message": "database went away"},
                    "event": cron_event(),
                },
            )
            done = await executor.run(POLLING_FAILURE, failed, retries=0)
        finally:
            logger.remove(sink)
        assert done.status == "completed"
        assert any(
            "gitlab-api-polling: all retries exhausted: StepError: database went away" in line
            for line in lines
        )


async def test_user_without_token_is_not_retried(db_url, fake_inngest) -> None:
    with SimulatorServer(seed=5, users=1, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        settings = inngest_settings(db_url, sim.url)
        async with running_app(settings) as (app, http):
            uid = await seed_user(app, "nobody@example.com", None, [("1", "p", "g/p")])
            run = await Executor(http).run(
                USER_SYNC, make_event(inngest_app.USER_SYNC_EVENT, {"user_id": uid})
            )
            revoked = await seed_user(
                app, "revoked@example.com", "sim-revoked", [("1", "p", "g/p")]
            )
            run2 = await Executor(http).run(
                USER_SYNC, make_event(inngest_app.USER_SYNC_EVENT, {"user_id": revoked})
            )
    for r, reason in ((run, "no_token"), (run2, "token_invalid")):
        assert r.status == "failed" and r.ops() == ["500"]
        assert r.responses[0].headers["x-inngest-no-retry"] == "true"
        assert r.output["name"] == "NonRetriableError"
        assert r.output["message"].endswith(f"skipped: {reason}")


async def test_gitlab_rate_limit_answers_retry_after(db_url, fake_inngest) -> None:
    with SimulatorServer(seed=5, users=1, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        # One attempt per request: the 429 surfaces at once, with no real sleep in the test.
        settings = inngest_settings(db_url, sim.url, gitlab_max_attempts=1)
        async with running_app(settings) as (app, http):
            users = await seed_world(app, sim)
            [uid] = users
            sim.world.add_fault(kind="rate_limit", retry_after=7)
            before = time.time()
            res = await Executor(http).call(
                USER_SYNC, make_event(inngest_app.USER_SYNC_EVENT, {"user_id": uid}), run_id="r"
            )
            assert res.status_code == 500
            assert "x-inngest-no-retry" not in res.headers
            assert res.json()["name"] == "RetryAfterError"
            retry_at = dt.datetime.fromisoformat(res.headers["retry-after"].replace("Z", "+00:00"))
            assert before + 6 <= retry_at.timestamp() <= time.time() + 8


async def test_transient_failure_is_retried_until_it_succeeds(db_url, fake_inngest) -> None:
    with SimulatorServer(seed=9, users=1, projects=2, issues=4, merge_requests=2, notes=1) as sim:
        settings = inngest_settings(db_url, sim.url)
        async with running_app(settings) as (app, http):
            users = await seed_world(app, sim)
            [uid] = users
            fault = sim.world.add_fault(kind="status", status=503)
            executor = Executor(http)
            event = make_event(inngest_app.USER_SYNC_EVENT, {"user_id": uid})
            res = await executor.call(USER_SYNC, event, run_id="r")
            assert res.status_code == 500
            assert "x-inngest-no-retry" not in res.headers  # Inngest will retry
            assert res.json()["name"] == "UserSyncFailed"
            assert "projects_failed" in res.json()["message"]

            assert sim.world.faults.remove(fault.id)
            res = await executor.call(USER_SYNC, event, run_id="r", attempt=1)
            assert res.status_code == 200
            assert res.json()["status"] == "processed"
            username, pids = users[uid]
            assert await stored_events(app, uid) == expected_events(sim, username, pids)


async def test_user_sync_shares_the_lease_with_api_poll(db_url, fake_inngest) -> None:
    """A user already being synced (by /api/poll, say) is skipped, not synced twice."""
    with SimulatorServer(seed=2, users=1, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        settings = inngest_settings(db_url, sim.url)
        async with running_app(settings) as (app, http):
            [uid] = await seed_world(app, sim)
            # The other run's claim, as it takes it (advisory lock on PostgreSQL, row on SQLite).
            other = UserLease(SyncDeps(settings, app.state.sessionmaker, http), uid, "api-poll")
            async with other.session() as s, s.begin():
                assert await other.acquire(s)
            try:
                run = await Executor(http).run(
                    USER_SYNC, make_event(inngest_app.USER_SYNC_EVENT, {"user_id": uid})
                )
            finally:
                await other.release()
            assert run.status == "completed"
            assert run.output["status"] == "skipped" and run.output["reason"] == "in_progress"
            assert await stored_events(app, uid) == []


async def test_users_without_token_are_skipped_by_the_fan_out_not_failed(
    db_url, fake_inngest
) -> None:
    # A tokenless user.sync run could only fail (NonRetriableError, an Inngest failure alert)
    # every tick: the polling run reports such users itself and sends them no event.
    with SimulatorServer(seed=5, users=1, projects=1, issues=2, merge_requests=1, notes=1) as sim:
        settings = inngest_settings(db_url, sim.url)
        async with running_app(settings) as (app, http):
            users = await seed_world(app, sim)
            [uid] = users
            nobody = await seed_user(app, "nobody@example.com", None, [("1", "p", "g/p")])
            empty = await seed_user(app, "empty@example.com", "", [("1", "p", "g/p")])
            executor = Executor(http)
            poll = await executor.run(POLLING, cron_event())
            assert poll.status == "completed", poll.output
            assert poll.output["users"] == 1 and poll.output["events_sent"] == 1
            assert sorted(poll.output["no_token"]) == sorted([nobody, empty])
            assert [e["data"]["user_id"] for e in fake_inngest.sent_events()] == [uid]

            event = make_event(inngest_app.POLL_REQUESTED_EVENT, {"user_ids": [nobody, uid]})
            manual = await executor.run(POLLING, event)
            assert manual.status == "completed"
            assert manual.output["no_token"] == [nobody] and manual.output["users"] == 1
