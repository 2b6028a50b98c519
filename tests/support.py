"""Helpers shared by integration and e2e tests: a live server, seeding, ground truth."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from app.db import repository as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Event
from app.settings import Settings, load_settings
from gitlab_sim.expected import expected_events
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import iso_ms

SIGNING_KEY = "signkey-test-" + "5e" * 32
FALLBACK_KEY = "signkey-test-" + "fa" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_settings(
    db_url: str, gitlab_url: str = "http://127.0.0.1:9", **overrides: Any
) -> Settings:
    """Settings for tests: zero sleeps, a signing key, the simulator as GitLab."""
    base: dict[str, Any] = {
        "database_url": db_url,
        "gitlab_instance_url": gitlab_url,
        "inngest_signing_key": SIGNING_KEY,
        "gitlab_backoff_base": 0,
        "gitlab_backoff_max": 0,
        "gitlab_rate_limit_max_wait": 0,
        "user_retry_backoff_base": 0,
        "min_refresh_interval_seconds": 0,
        "sync_backfill_days": 0,
        "log_format": "json",
        "gitlab_read_timeout": 5,
    }
    base.update(overrides)
    return load_settings(**base)


class LiveServer:
    """The real app under uvicorn on 127.0.0.1, in a thread with its own event loop."""

    def __init__(self, settings: Settings, **app_options: Any) -> None:
        """`app_options` go to create_app (e.g. `clock=` for OIDC tests)."""
        from app.main import create_app

        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, **app_options),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def poll(
        self, body: Any = None, *, key: str = SIGNING_KEY, timeout: float = 120
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        return httpx.post(f"{self.url}/api/poll", headers=headers, timeout=timeout, **kwargs)


def run(coro: Any) -> Any:
    """Run a coroutine to completion, also from inside a running loop (async tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []

    def target() -> None:
        box.append(asyncio.run(coro))

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if not box:
        raise RuntimeError("database helper failed (see the thread's traceback)")
    return box[0]


async def _with_session(db_url: str, work: Any) -> Any:
    engine = create_engine(load_settings(database_url=db_url))
    try:
        sm = create_sessionmaker(engine)
        async with sm() as s, s.begin():
            return await work(s)
    finally:
        await engine.dispose()


def add_user(
    db_url: str,
    email: str,
    token: str | None,
    projects: Iterable[tuple[str, str, str]] = (),
    *,
    refresh_token: str | None = None,
    expires_at: Any = None,
) -> str:
    """Create a user with a GitLab account and monitored projects (id, name, path)."""

    async def work(s):
        user = await repo.create_user_with_account(
            s,
            email=email,
            name=email.split("@")[0],
            access_token=token or "",
            refresh_token=refresh_token,
            expires_at=expires_at,
        )
        if token is None:
            await s.execute(
                sa.text('UPDATE account SET "accessToken" = NULL WHERE "userId" = :u'),
                {"u": user.id},
            )
        for pid, name, path in projects:
            await repo.add_project(s, user_id=user.id, gitlab_project_id=pid, name=name, path=path)
        return user.id

    return run(_with_session(db_url, work))


def add_project(db_url: str, user_id: str, pid: str, name: str, path: str) -> None:
    async def work(s):
        await repo.add_project(s, user_id=user_id, gitlab_project_id=pid, name=name, path=path)

    run(_with_session(db_url, work))


EVENT_FIELDS = (
    "type",
    "title",
    "body",
    "author",
    "authorAvatar",
    "labels",
    "gitlabUrl",
)


def stored_events(db_url: str, user_id: str | None = None) -> list[dict[str, Any]]:
    async def work(s):
        stmt = sa.select(Event)
        if user_id is not None:
            stmt = stmt.where(Event.userId == user_id)
        rows = (await s.execute(stmt)).scalars().all()
        return [
            {
                "userId": e.userId,
                "gitlabEventId": e.gitlabEventId,
                "project": e.project,
                "projectId": e.projectId,
                "createdAt": e.createdAt,
                **{f: getattr(e, f) for f in EVENT_FIELDS},
                "labels": list(e.labels or []),
            }
            for e in rows
        ]

    return run(_with_session(db_url, work))


def query(db_url: str, sql: str, **params: Any) -> list[tuple]:
    async def work(s):
        return [tuple(r) for r in (await s.execute(sa.text(sql), params)).all()]

    return run(_with_session(db_url, work))


# --- ground truth: the Event table against the simulator's oracle ---------------------------

COMPARED = ("type", "title", "body", "author", "authorAvatar", "labels", "gitlabUrl")


def truth(sim: SimulatorServer, username: str, project_ids: list[int]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for pid in project_ids:
        p = sim.world.project(pid)
        for e in expected_events(sim.world, username, pid):
            assert e["gitlabEventId"] not in out
            out[e["gitlabEventId"]] = {
                **{k: e[k] for k in COMPARED},
                "createdAt": e["createdAt"],
                "project": p.name,
                "projectId": p.path_with_namespace,
            }
    return out


def actual(db_url: str, user_id: str) -> dict[str, dict]:
    rows = stored_events(db_url, user_id)
    out: dict[str, dict] = {}
    for r in rows:
        assert r["gitlabEventId"] not in out, "duplicate event"
        out[r["gitlabEventId"]] = {
            **{k: r[k] for k in COMPARED},
            "createdAt": iso_ms(int(r["createdAt"].timestamp() * 1000)),
            "project": r["project"],
            "projectId": r["projectId"],
        }
    return out


def assert_equal_truth(db_url, user_id, sim, username, pids) -> None:
    want, got = truth(sim, username, pids), actual(db_url, user_id)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    assert not missing, f"missing {len(missing)}: {missing[:5]}"
    assert not extra, f"unexpected {len(extra)}: {extra[:5]}"
    wrong = [k for k in want if want[k] != got[k]]
    assert not wrong, f"differs: {wrong[:3]}: {want[wrong[0]]} != {got[wrong[0]]}"


def project_tuple(sim: SimulatorServer, pid: int) -> tuple[str, str, str]:
    p = sim.world.project(pid)
    return (str(pid), p.name, p.path_with_namespace)


def oauth_overrides(sim: SimulatorServer) -> dict[str, str]:
    """Settings that let the service refresh tokens against the simulator's OAuth app."""
    app_cfg = sim.world.describe()["oauth_app"]
    return {
        "gitlab_oauth_client_id": app_cfg["client_id"],
        "gitlab_oauth_client_secret": app_cfg["client_secret"],
        "gitlab_oauth_redirect_uri": app_cfg["redirect_uri"],
    }


def oauth_settings(db_url: str, sim: SimulatorServer, **overrides: Any) -> Settings:
    return make_settings(db_url, sim.url, **oauth_overrides(sim), **overrides)
