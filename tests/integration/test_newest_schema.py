"""The original app as it is today: a database built from its newest schema (work-item
columns, comment threads, "Person"), adopted by `migrate` and synced through POST /api/poll
against the GitLab simulator over real HTTP.

After every step each user's rows are compared with the simulator's oracle, column by
column: the work-item columns of issues and merge requests, every comment linked to the same
user's row of its item, every visible author a "Person", and the rows of the original app
that this service does not own left exactly as they were. PostgreSQL only: the newest app
runs on PostgreSQL (SQLite keeps the story schema, tested everywhere else).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.db.migrate import upgrade_to_head
from app.main import create_app
from app.settings import Settings
from app.sync.app_refresh import follow_once
from gitlab_sim.expected import expected_work_items
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World
from tests.conftest import drop_pg_database, new_pg_database
from tests.support import (
    NEWEST_SCHEMA,
    SIGNING_KEY,
    add_user,
    assert_work_items,
    asyncpg_dsn,
    in_the_past,
    make_settings,
    pg_fetch,
    pg_script,
    pg_user_rows,
    project_tuple,
)

SHARED, PUBLIC = 1, 2
BOTH = [SHARED, PUBLIC]
# Every run reconciles every synced project (the grid step is a third of a millisecond).
EVERY_RUN = 1e-7


# --- the world ---------------------------------------------------------------------------------


def build_world() -> World:
    """alice and bob share a private project; the public one has alice as its only member:
    bob reads it as an outsider (no internal notes, no confidential issue) and carol, an
    outsider this service never polls, comments there. Threads with replies, resolved and
    open review threads, assignees, system notes and `#`/`!` references, a day ago."""
    w = World()
    for name, full in (("alice", "Alice A."), ("bob", "Bob B."), ("carol", "Carol C.")):
        w.create_user(name, full, f"https://avatars.example/{name}.png")
    w.create_project("team/shared", visibility="private", members=["alice", "bob"])
    w.create_project("team/public", visibility="public", members=["alice"])
    with in_the_past(w):
        crash = w.create_issue(
            SHARED, "Crash on start", description="See #2 and !1", author="alice"
        )
        w.update_issue(SHARED, crash.iid, labels=["bug"], assignees=["bob"])
        first = w.add_note(SHARED, "issue", crash.iid, "\n  \n  Reproduced  \nlog", author="bob")
        w.add_note(SHARED, "issue", crash.iid, "Same here", author="alice", reply_to=first.id)
        w.add_note(SHARED, "issue", crash.iid, "A question about #7", author="bob", thread=True)
        w.create_issue(SHARED, "Second problem", description=None, author="bob")
        mr = w.create_merge_request(
            SHARED, "Fix crash", description="Closes #1, #2; see !4", author="bob"
        )
        review = w.add_note(SHARED, "merge_request", mr.iid, "Nit: naming", thread=True)
        w.add_note(SHARED, "merge_request", mr.iid, "Done", author="bob", reply_to=review.id)
        w.resolve_thread(review.id, by="alice")
        w.add_note(SHARED, "merge_request", mr.iid, "Needs a test", author="alice", thread=True)
        w.add_note(SHARED, "merge_request", mr.iid, "LGTM", author="alice")

        hello = w.create_issue(PUBLIC, "Hello world", description="fix #1 please", author="alice")
        w.add_note(PUBLIC, "issue", hello.iid, "Drive-by comment", author="carol")
        w.add_note(PUBLIC, "issue", hello.iid, "members only", author="alice", internal=True)
        w.create_issue(PUBLIC, "Secret", author="alice", confidential=True)
        w.create_merge_request(PUBLIC, "Docs", description="Resolves #1", author="alice")
    return w


# --- the database: the newest app's schema, with the app's own rows --------------------------


# Rows the original app wrote: a user of its own (never polled), a commit, a saved query,
# an event with a read mark, a person; and alice's row of an issue written by the app's
# poller before this service took over (it keeps its id: ReadEvent points at it).
APP_ROWS = """
INSERT INTO "user" (id, name, email, "updatedAt") VALUES ('app-dave', 'Dave', 'dave@x', now());
INSERT INTO "Event" (id, "userId", type, title, author, project, "projectId", labels,
    "gitlabEventId", "gitlabUrl", "updatedAt", status, "lastActivityAt", assignees,
    participants, "mentionedInIds", "closesIssueIds")
VALUES ('app-ev-1', 'app-dave', 'issue', 'Elsewhere', 'dave', 'Other', '99', '{}',
    'issue-990001', 'https://gitlab.example/o/-/issues/1', now(), 'open', now(), '{}', '{}',
    '{}', '{}');
INSERT INTO "ReadEvent" (id, "userId", "eventId") VALUES ('app-read-1', 'app-dave', 'app-ev-1');
INSERT INTO "Person" (id, "userId", "gitlabId", username, name, email, "updatedAt")
VALUES ('app-person-1', 'app-dave', 4242, 'dave', 'Dave', 'dave@x', now());
INSERT INTO "Commit" (id, "userId", sha, "shortSha", message, title, "authoredAt",
    "projectId", "webUrl") VALUES ('app-commit-1', 'app-dave', 'abc', 'abc', 'm', 't', now(),
    '99', 'https://gitlab.example/o/-/commit/abc');
INSERT INTO "UserQuery" (id, "userId", name, filters, "updatedAt")
VALUES ('app-query-1', 'app-dave', 'mine', '{"a": 1}', now());
"""
# Tables this service never writes, compared whole before and after.
APP_TABLES = ("Commit", "CommitFile", "File", "MRFileChange", "UserQuery", "session")


@pytest.fixture
def newest_db_url() -> Iterator[str]:
    url = new_pg_database(migrated=False)
    try:
        asyncio.run(pg_script(url, NEWEST_SCHEMA))
        asyncio.run(pg_script(url, APP_ROWS))
        upgrade_to_head(url)
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(world=build_world()) as s:
        yield s


@pytest.fixture
def users(newest_db_url: str, sim: SimulatorServer) -> dict[str, str]:
    both = [project_tuple(sim, p) for p in (SHARED, PUBLIC)]
    return {
        "alice": add_user(newest_db_url, "alice@example.com", sim.token("alice"), both),
        "bob": add_user(newest_db_url, "bob@example.com", sim.token("bob"), both),
    }


def settings_for(db_url: str, sim: SimulatorServer, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "reconcile_interval_hours": 0,
        "gitlab_max_attempts": 2,
        "app_refresh_follow_seconds": 0,  # followed explicitly (follow_once) where tested
    }
    return make_settings(db_url, sim.url, **{**base, **overrides})


class Service:
    def __init__(self, client: httpx.AsyncClient, app: Any) -> None:
        self.client = client
        self.app = app
        self.headers = {"Authorization": f"Bearer {SIGNING_KEY}"}

    async def poll(self) -> dict[str, Any]:
        r = await self.client.post("/api/poll", headers=self.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["failed"] == 0, body
        return body


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Service]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield Service(c, app)


async def app_snapshot(url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table in APP_TABLES:
        out[table] = [dict(r) for r in await pg_fetch(url, f'SELECT * FROM "{table}" ORDER BY id')]
    for table in ("Event", "ReadEvent", "Person"):
        out[table] = [
            dict(r)
            for r in await pg_fetch(
                url, f'SELECT * FROM "{table}" WHERE "userId" = $1 ORDER BY id', "app-dave"
            )
        ]
    return out


# --- the tests ---------------------------------------------------------------------------------


async def test_newest_schema_first_poll_and_changes(newest_db_url, sim, users) -> None:
    url = newest_db_url
    before = await app_snapshot(url)
    async with service(settings_for(url, sim)) as svc:
        ready = await svc.client.get("/readyz")
        assert ready.json()["schema"] == "newest"
        await svc.poll()
        for name in ("alice", "bob"):
            await asyncio.to_thread(assert_work_items, url, users[name], sim, name, BOTH)
        assert await app_snapshot(url) == before

        # Changes: an issue closed, an MR merged, a reply in an existing thread, a new
        # thread, an MR description gaining "Fixes #2", a label change (a system note).
        w = sim.world
        crash = w.item(SHARED, "issue", 1)
        thread = next(n for n in crash.notes if not n.individual)
        w.update_issue(SHARED, 2, state="closed")
        w.update_merge_request(SHARED, 1, state="merged")
        w.add_note(SHARED, "issue", 1, "A reply, see !1", author="bob", reply_to=thread.id)
        w.add_note(PUBLIC, "issue", 1, "New thread", author="carol", thread=True)
        w.update_merge_request(PUBLIC, 1, description="Resolves #1\n\nFixes #2")
        w.update_issue(PUBLIC, 1, labels=["docs"])
        await svc.poll()
        for name in ("alice", "bob"):
            await asyncio.to_thread(assert_work_items, url, users[name], sim, name, BOTH)
        assert await app_snapshot(url) == before


async def orphans(url: str) -> list[str]:
    """Comments whose item row is gone (the app's foreign key only unlinks them)."""
    rows = await pg_fetch(
        url,
        """SELECT "gitlabEventId" FROM "Event"
           WHERE type = 'comment' AND "userId" <> 'app-dave' AND "parentEventId" IS NULL""",
    )
    return [r["gitlabEventId"] for r in rows]


async def test_deleted_comments_and_items_take_their_links_with_them(
    newest_db_url, sim, users
) -> None:
    url, w = newest_db_url, sim.world
    async with service(settings_for(url, sim, reconcile_interval_hours=EVERY_RUN)) as svc:
        await svc.poll()
        # A comment deleted on an item that then changes: the item's threads, read whole,
        # no longer hold it; GitLab confirms it gone (404) and it goes, at once.
        crash = w.item(SHARED, "issue", 1)
        reply = next(n for n in crash.notes if not n.individual and n.author_id == 1)
        w.delete_note(reply.id)
        w.update_issue(SHARED, 1, title="Crash on start (edited)")
        # A comment deleted without its item changing: reconciliation sees the count differ.
        mr = w.item(SHARED, "merge_request", 1)
        lgtm = next(n for n in mr.notes if n.body == "LGTM")
        w.delete_note(lgtm.id)
        # An item deleted: reconciliation confirms it gone, its comments go with it. It is
        # most of bob's events of that project: held by the first reconciliation until the
        # next one finds the same (README: Access and deletions).
        w.delete_item(PUBLIC, "issue", 1)
        summary = await svc.poll()
        assert sum(u["removed"] for u in summary["users"]) > 0
        await svc.poll()
        for name in ("alice", "bob"):
            # carol's only comment went with the issue: she stays a person, as in the app.
            await asyncio.to_thread(
                assert_work_items, url, users[name], sim, name, BOTH, kept={"carol"}
            )
        assert await orphans(url) == []


async def test_a_partial_schema_gets_the_columns_it_has(sim) -> None:
    """An app database built by `prisma migrate` alone lacks "iid" and "discussionId": the
    other columns are written, those two never (nothing is added to the app's schema)."""
    url = await asyncio.to_thread(new_pg_database, migrated=False)
    try:
        await pg_script(url, NEWEST_SCHEMA)
        await pg_script(url, 'ALTER TABLE "Event" DROP COLUMN iid, DROP COLUMN "discussionId"')
        await asyncio.to_thread(upgrade_to_head, url)
        alice = await asyncio.to_thread(
            add_user, url, "alice@example.com", sim.token("alice"), [project_tuple(sim, SHARED)]
        )
        async with service(settings_for(url, sim)) as svc:
            ready = (await svc.client.get("/readyz")).json()
            assert ready["schema"] == "partial"
            assert ready["schema_detail"] == 'partial (lacks "Event".iid, "Event".discussionId)'
            await svc.poll()
        want = expected_work_items(sim.world, "alice", SHARED)
        got = await pg_user_rows(url, alice)
        assert sorted(got) == sorted(want)
        assert "iid" not in next(iter(got.values()))
        for key, row in got.items():
            if want[key]["type"] == "comment":
                assert row["parentEventId"] == got[want[key]["parent"]]["id"]
            else:
                assert row["commentCount"] == want[key]["commentCount"]
    finally:
        await asyncio.to_thread(drop_pg_database, url)


# What `prisma db push` adds to a story-era database when the app is upgraded (from the
# newest schema's dump).
UPGRADE_APP = """
ALTER TABLE "Event" ADD COLUMN assignees text[], ADD COLUMN "closesIssueIds" integer[],
    ADD COLUMN "commentCount" integer DEFAULT 0 NOT NULL, ADD COLUMN "gitlabParentId" integer,
    ADD COLUMN "isSystemNote" boolean DEFAULT false NOT NULL,
    ADD COLUMN "lastActivityAt" timestamp(3) without time zone,
    ADD COLUMN "mentionedInIds" integer[], ADD COLUMN "parentEventId" text,
    ADD COLUMN "parentType" text, ADD COLUMN participants text[], ADD COLUMN status text,
    ADD COLUMN iid integer, ADD COLUMN "discussionId" text,
    ADD COLUMN "unresolvedCommentCount" integer DEFAULT 0 NOT NULL;
ALTER TABLE "Event" ADD CONSTRAINT "Event_parentEventId_fkey" FOREIGN KEY ("parentEventId")
    REFERENCES "Event"(id) ON UPDATE CASCADE ON DELETE SET NULL;
CREATE TABLE "Person" (
    id text NOT NULL PRIMARY KEY, "userId" text NOT NULL REFERENCES "user"(id) ON DELETE CASCADE,
    "gitlabId" integer NOT NULL, username text NOT NULL, name text, email text, "avatarUrl" text,
    "createdAt" timestamp(3) without time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    "updatedAt" timestamp(3) without time zone NOT NULL);
CREATE UNIQUE INDEX "Person_userId_gitlabId_key" ON "Person" ("userId", "gitlabId");
"""


async def test_an_upgraded_app_gets_its_new_columns_filled_by_reconciliation(sim) -> None:
    """Rows written on the story schema, then the app upgraded (columns appear): the next
    reconciliation rewrites them whole (activity, threads, system notes, the GitLab
    project id in "projectId"), while the service keeps running."""
    url = await asyncio.to_thread(new_pg_database, migrated=True)
    try:
        both = [project_tuple(sim, p) for p in (SHARED, PUBLIC)]
        ids = {
            name: await asyncio.to_thread(
                add_user, url, f"{name}@example.com", sim.token(name), both
            )
            for name in ("alice", "bob")
        }
        settings = settings_for(url, sim, reconcile_interval_hours=EVERY_RUN)
        async with service(settings) as svc:
            assert (await svc.client.get("/readyz")).json()["schema"] == "story"
            await svc.poll()
            story = await pg_user_rows(url, ids["alice"])
            assert {r["projectId"] for r in story.values()} == {"team/shared", "team/public"}
            await pg_script(url, UPGRADE_APP)  # the app is upgraded under the running service
            assert (await svc.client.get("/readyz")).json()["schema"] == "newest"
            await svc.poll()
            for name in ("alice", "bob"):
                await asyncio.to_thread(assert_work_items, url, ids[name], sim, name, BOTH)
            # Rewritten in place: the story rows kept their ids.
            upgraded = await pg_user_rows(url, ids["alice"])
            assert all(upgraded[k]["id"] == story[k]["id"] for k in story)
    finally:
        await asyncio.to_thread(drop_pg_database, url)


# --- beside the app's own Refresh button ---------------------------------------------------------

# The statements the newest app's Refresh (events.manualRefresh -> storeWorkItemBundle) sends
# for an issue, and then for LastSync: captured from PostgreSQL's statement log with the app's
# Prisma schema and its upsert calls (Prisma 6.19.3 with the client engine and 7.10.1 send
# them byte for byte alike); the RETURNING lists are shortened to the id.
APP_PARENT_UPSERT = (
    'INSERT INTO "public"."Event" ("id","userId","type","title","body","author",'
    '"authorAvatar","project","projectId","labels","gitlabEventId","iid","gitlabUrl",'
    '"createdAt","updatedAt","parentType","gitlabParentId","closesIssueIds","mentionedInIds",'
    '"isSystemNote","assignees","participants","commentCount","unresolvedCommentCount",'
    '"lastActivityAt","status") VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,'
    '$16,$17,$18,$19,$20,$21,$22,$23,$24,$25,$26) ON CONFLICT ("gitlabEventId") DO UPDATE SET '
    '"title" = $27, "body" = $28, "author" = $29, "authorAvatar" = $30, "labels" = $31, '
    '"iid" = $32, "gitlabUrl" = $33, "assignees" = $34, "status" = $35, "mentionedInIds" = $36, '
    '"closesIssueIds" = $37, "updatedAt" = $38 WHERE ("public"."Event"."gitlabEventId" = $39 '
    'AND 1=1) RETURNING "public"."Event"."id"'
)
APP_LAST_SYNC_UPSERT = (
    'INSERT INTO "public"."LastSync" ("id","userId","lastSyncAt","createdAt","updatedAt") '
    'VALUES ($1,$2,$3,$4,$5) ON CONFLICT ("userId") DO UPDATE SET "lastSyncAt" = $6, '
    '"updatedAt" = $7 WHERE ("public"."LastSync"."userId" = $8 AND 1=1) '
    'RETURNING "public"."LastSync"."id"'
)


def app_parent_upsert_args(user_id: str, event_id: str, now: datetime) -> list[Any]:
    title, url = "Crash (from the app)", "https://gitlab.example/team/shared/-/issues/1"
    insert = [
        *("cl-app-1", user_id, "issue", title, None, "alice", None, "team/shared", "1"),
        *(["bug"], event_id, 1, url, now, now, None, None, [], [], False, [], [], 0, 0, now),
        "open",
    ]
    update = [title, None, "alice", None, ["bug"], 1, url, [], "open", [], [], now, event_id]
    return insert + update


async def test_the_apps_refresh_statement_on_an_adopted_database(newest_db_url, sim, users):
    """What PostgreSQL answers the app's Refresh on a database with per-user rows: its
    upsert names a unique key on "gitlabEventId" alone, which no longer exists (two users
    may hold the same item), so PostgreSQL refuses to plan it (42P10) and the app's
    transaction rolls back: nothing of ours is touched. Its LastSync write goes through."""
    url = newest_db_url
    async with service(settings_for(url, sim)) as svc:
        await svc.poll()
    before = await pg_user_rows(url, users["alice"])
    key = next(k for k, r in before.items() if r["type"] == "issue" and r["iid"] == 1)
    now = datetime.now(UTC).replace(tzinfo=None)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        with pytest.raises(asyncpg.PostgresError) as refused:
            async with conn.transaction():
                await conn.execute(
                    APP_PARENT_UPSERT, *app_parent_upsert_args(users["alice"], key, now)
                )
        assert refused.value.sqlstate == "42P10"
        assert "no unique or exclusion constraint matching the ON CONFLICT" in str(refused.value)
        await conn.execute(
            APP_LAST_SYNC_UPSERT, "cl-ls-1", users["alice"], now, now, now, now, now, users["alice"]
        )
    finally:
        await conn.close()
    assert await pg_user_rows(url, users["alice"]) == before
    (last,) = await pg_fetch(
        url, 'SELECT "lastSyncAt" FROM "LastSync" WHERE "userId" = $1', users["alice"]
    )
    assert abs(last["lastSyncAt"] - now) <= timedelta(milliseconds=1)  # TIMESTAMP(3) rounds


async def app_refresh(url: str, user_id: str) -> datetime:
    """What the app's Refresh leaves behind on such a database: its LastSync write."""
    now = datetime.now(UTC).replace(tzinfo=None)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(APP_LAST_SYNC_UPSERT, "cl-ls", user_id, now, now, now, now, now, user_id)
    finally:
        await conn.close()
    return now


async def test_the_apps_refresh_is_followed_by_a_sync_of_that_user(newest_db_url, sim, users):
    url, alice, bob = newest_db_url, users["alice"], users["bob"]
    async with service(settings_for(url, sim)) as svc:
        deps = svc.app.state.sync_deps
        await svc.poll()
        assert await follow_once(deps) is None  # LastSync is what this service wrote
        new = sim.world.add_note(SHARED, "issue", 1, "Pressed Refresh for this", author="bob")
        await app_refresh(url, alice)
        # Two processes look at once: one of them syncs alice, once.
        outcomes = await asyncio.gather(follow_once(deps), follow_once(deps))
        (followed,) = [o for o in outcomes if o is not None]
        assert followed.summary.trigger == "app_refresh"
        assert [(u.user_id, u.status) for u in followed.summary.users] == [(alice, "processed")]
        rows = await pg_user_rows(url, alice)
        assert f"note-{new.id}" in rows
        assert f"note-{new.id}" not in await pg_user_rows(url, bob)  # bob pressed nothing
        assert await follow_once(deps) is None  # followed once; LastSync is ours again
        await asyncio.to_thread(assert_work_items, url, alice, sim, "alice", BOTH)


async def test_serve_follows_the_apps_refresh_by_itself(newest_db_url, sim, users):
    url, alice = newest_db_url, users["alice"]
    settings = settings_for(url, sim, app_refresh_follow_seconds=0.05)
    async with service(settings) as svc:
        await svc.poll()
        new = sim.world.add_note(SHARED, "issue", 1, "Refresh, please", author="bob")
        pressed = await app_refresh(url, alice)
        for _ in range(600):  # the background task's next looks (at most 30 s)
            if f"note-{new.id}" in await pg_user_rows(url, alice):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the app's Refresh was not followed")
    (last,) = await pg_fetch(url, 'SELECT "lastSyncAt" FROM "LastSync" WHERE "userId" = $1', alice)
    assert last["lastSyncAt"] > pressed  # this service's sync moved it again


async def test_no_following_on_the_story_schema(db_url, sim) -> None:
    """The story app's refresh stores its own rows; LastSync is never followed there."""
    if not db_url.startswith("postgresql"):
        pytest.skip("the app's statements are PostgreSQL's")
    alice = await asyncio.to_thread(
        add_user, db_url, "alice@example.com", sim.token("alice"), [project_tuple(sim, SHARED)]
    )
    async with service(settings_for(db_url, sim)) as svc:
        await svc.poll()
        await app_refresh(db_url, alice)
        assert await follow_once(svc.app.state.sync_deps) is None


async def test_start_up_says_which_schema_it_found(newest_db_url, sim) -> None:
    from loguru import logger

    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="INFO")
    try:
        async with service(settings_for(newest_db_url, sim)):
            for _ in range(400):  # the warm-up runs in the background (at most 20 s)
                if "database schema: newest" in seen:
                    break
                await asyncio.sleep(0.05)
    finally:
        logger.remove(sink)
    assert "database schema: newest" in seen


def test_status_names_the_schema(newest_db_url, monkeypatch) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("DATABASE_URL", newest_db_url)
    r = CliRunner().invoke(cli, ["status", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["schema"] == "newest"
    r = CliRunner().invoke(cli, ["migrate"], catch_exceptions=False)
    assert r.stdout.splitlines()[-1] == "schema: newest"
