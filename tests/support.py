"""Helpers shared by integration and e2e tests: a live server, seeding, ground truth."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import sqlalchemy as sa
import uvicorn

from app.db import repository as repo
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Event
from app.settings import Settings, load_settings
from gitlab_sim.expected import expected_events, expected_people, expected_work_items
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World, iso_ms

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


def truth(
    sim: SimulatorServer, username: str, project_ids: list[int], *, newest: bool = False
) -> dict[str, dict]:
    """The story columns of every event the user should have; `newest`: as on the newest
    app's schema (system notes, its comment titles, the GitLab project id in projectId)."""
    out: dict[str, dict] = {}
    for pid in project_ids:
        p = sim.world.project(pid)
        for e in expected_events(sim.world, username, pid, newest=newest):
            assert e["gitlabEventId"] not in out
            out[e["gitlabEventId"]] = {
                **{k: e[k] for k in COMPARED},
                "createdAt": e["createdAt"],
                "project": p.name,
                "projectId": str(p.id) if newest else p.path_with_namespace,
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


def assert_equal_truth(db_url, user_id, sim, username, pids, *, newest: bool = False) -> None:
    want, got = truth(sim, username, pids, newest=newest), actual(db_url, user_id)
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


# --- the newest app's schema (PostgreSQL) -------------------------------------------------------

NEWEST_SCHEMA = (Path(__file__).parent / "fixtures" / "newest_schema.sql").read_text()
WORK_ITEM_ARRAYS = ("labels", "assignees", "participants", "mentionedInIds", "closesIssueIds")


def asyncpg_dsn(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


async def pg_fetch(url: str, sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def pg_script(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def newest_pg_database(extra_sql: str = "") -> str:
    """A database built from the newest app's own schema (plus `extra_sql`), adopted by
    `migrate`. Drop it with tests.conftest.drop_pg_database."""
    from app.db.migrate import upgrade_to_head
    from tests.conftest import new_pg_database

    url = new_pg_database(migrated=False)
    run(pg_script(url, NEWEST_SCHEMA + extra_sql))
    upgrade_to_head(url)
    return url


async def pg_user_rows(url: str, user_id: str) -> dict[str, dict[str, Any]]:
    rows = await pg_fetch(url, 'SELECT * FROM "Event" WHERE "userId" = $1', user_id)
    out = {r["gitlabEventId"]: dict(r) for r in rows}
    assert len(out) == len(rows), "duplicate event"
    return out


def assert_work_items(
    url: str,
    user_id: str,
    sim: SimulatorServer,
    username: str,
    pids: list[int],
    *,
    kept: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Every row of the user on the newest app's schema equals what GitLab's data implies,
    column by column: the story columns, the work-item columns of items, each comment linked
    to the same user's item row; the user's "Person" rows are every visible author, plus
    `kept` (usernames seen before: people are never deleted)."""
    got = run(pg_user_rows(url, user_id))
    want: dict[str, dict[str, Any]] = {}
    for pid in pids:
        want.update(expected_work_items(sim.world, username, pid))
    story = truth(sim, username, pids, newest=True)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, (missing[:5], extra[:5])
    for key, expected in want.items():
        row = got[key]
        for array in WORK_ITEM_ARRAYS:
            assert row[array] is not None, (key, array)  # '{}', never NULL
        stored = {k: row[k] for k in COMPARED if k != "labels"}
        assert stored == {k: story[key][k] for k in COMPARED if k != "labels"}, key
        assert list(row["labels"]) == story[key]["labels"], key
        assert iso_ms(int(row["createdAt"].timestamp() * 1000)) == story[key]["createdAt"], key
        if expected["type"] == "comment":
            assert row["parentEventId"] == got[expected["parent"]]["id"], key
            fields = ("parentType", "gitlabParentId", "discussionId", "isSystemNote")
            fields += ("mentionedInIds", "title", "projectId")
            assert {f: row[f] for f in fields} == {f: expected[f] for f in fields}, key
            assert row["iid"] is None and row["status"] is None, key
            assert row["lastActivityAt"] is None, key
        else:
            fields = ("iid", "status", "assignees", "participants", "commentCount")
            fields += ("unresolvedCommentCount", "mentionedInIds", "closesIssueIds", "projectId")
            assert {f: row[f] for f in fields} == {f: expected[f] for f in fields}, key
            last = iso_ms(int(row["lastActivityAt"].timestamp() * 1000))
            assert last == expected["lastActivityAt"], key
            assert row["parentEventId"] is None and row["isSystemNote"] is False, key
    sql = 'SELECT "gitlabId", username, name, "avatarUrl" FROM "Person" WHERE "userId" = $1'
    people = {
        p["gitlabId"]: {"username": p["username"], "name": p["name"], "avatarUrl": p["avatarUrl"]}
        for p in run(pg_fetch(url, sql, user_id))
    }
    want_people = expected_people(sim.world, username, pids)
    assert {k: people[k] for k in want_people if k in people} == want_people
    assert {people[k]["username"] for k in set(people) - set(want_people)} == set(kept)


@contextmanager
def in_the_past(w: World, hours: float = 24) -> Iterator[None]:
    """Changes made meanwhile are stamped `hours` ago: outside every incremental listing's
    overlap, so only a complete listing (a first sync, a reconciliation) can see them."""
    w.advance_clock(-hours * 3600)
    try:
        yield
    finally:
        w.advance_clock(hours * 3600)
