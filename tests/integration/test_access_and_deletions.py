"""Access loss and deletions (README: "Access and deletions"), through POST /api/poll and
GET /api/sync-status against the GitLab simulator over real HTTP, on SQLite and PostgreSQL.

After every step the "Event" table is compared with the simulator's oracle, which models
visibility (membership, confidential issues) and deletions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.db import repository as repo
from app.db.engine import create_sessionmaker
from app.db.models import LastSync, SyncCursor, utcnow
from app.gitlab.transport import create_http_client
from app.main import create_app
from app.settings import Settings, load_settings
from app.sync.deps import SyncDeps
from app.sync.reconcile import reconcile_due
from app.sync.results import UserResult
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World
from tests.support import (
    SIGNING_KEY,
    _with_session,
    add_user,
    assert_equal_truth,
    in_the_past,
    make_settings,
    project_tuple,
    query,
    run,
    stored_events,
)

PRIVATE, PUBLIC, OTHER = 1, 2, 3
# Every run reconciles every synced project (the grid step is a third of a millisecond).
EVERY_RUN = 1e-7
EVENTS_PER_PROJECT = 24  # 6 issues x (1 + 2 comments) + 3 MRs x (1 + 1 comment)


def build_world() -> World:
    """alice is a member of every project; bob of the private ones only (he reads the public
    one as a non-member); carol of none. Every project holds 24 events for its members,
    made a day ago."""
    w = World()
    for name in ("alice", "bob", "carol"):
        w.create_user(name)
    w.create_project("team/private", visibility="private", members=["alice", "bob"])
    w.create_project("team/public", visibility="public", members=["alice"])
    w.create_project("team/other", visibility="private", members=["alice", "bob"])
    with in_the_past(w):
        _fill(w)
    return w


def _fill(w: World) -> None:
    for pid in (PRIVATE, PUBLIC, OTHER):
        for n in range(6):
            it = w.create_issue(pid, f"issue {n} of {pid}", author="alice")
            w.add_note(pid, "issue", it.iid, f"first comment on {n}", author="alice")
            w.add_note(pid, "issue", it.iid, f"second comment on {n}", author="bob")
        for n in range(3):
            mr = w.create_merge_request(pid, f"mr {n} of {pid}", author="alice")
            w.add_note(pid, "merge_request", mr.iid, f"review {n}", author="alice")


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(world=build_world()) as s:
        yield s


@pytest.fixture
def users(db_url: str, sim: SimulatorServer) -> dict[str, str]:
    return {
        "alice": add_user(
            db_url,
            "alice@example.com",
            sim.token("alice"),
            [project_tuple(sim, p) for p in (PRIVATE, PUBLIC, OTHER)],
        ),
        "bob": add_user(
            db_url, "bob@example.com", sim.token("bob"), [project_tuple(sim, p) for p in (1, 2)]
        ),
    }


def settings_for(db_url: str, sim: SimulatorServer, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "access_loss_confirm_minutes": 0,
        "reconcile_interval_hours": 0,
        "gitlab_max_attempts": 2,
    }
    return make_settings(db_url, sim.url, **{**base, **overrides})


class Service:
    """The app in-process (ASGI) with its lifespan: polls and sync status as a caller sees."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {SIGNING_KEY}"}

    async def poll(self) -> dict[str, Any]:
        r = await self.client.post("/api/poll", headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def project_status(self, user_id: str, pid: int) -> dict[str, Any]:
        r = await self.client.get(
            "/api/sync-status", params={"user_id": user_id}, headers=self.headers
        )
        assert r.status_code == 200, r.text
        (user,) = r.json()["users"]
        return next(p for p in user["projects"] if p["gitlab_project_id"] == str(pid))


@asynccontextmanager
async def service(settings: Settings) -> AsyncIterator[Service]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield Service(c)


def user_result(summary: dict[str, Any], user_id: str) -> dict[str, Any]:
    return next(u for u in summary["users"] if u["user_id"] == user_id)


def event_ids(db_url: str, user_id: str) -> set[str]:
    return {e["gitlabEventId"] for e in stored_events(db_url, user_id)}


def project_event_ids(db_url: str, user_id: str, sim: SimulatorServer, pid: int) -> set[str]:
    path = sim.world.project(pid).path_with_namespace
    return {e["gitlabEventId"] for e in stored_events(db_url, user_id) if e["projectId"] == path}


def both_equal_truth(db_url: str, sim: SimulatorServer, users: dict[str, str]) -> None:
    assert_equal_truth(db_url, users["alice"], sim, "alice", [PRIVATE, PUBLIC, OTHER])
    assert_equal_truth(db_url, users["bob"], sim, "bob", [PRIVATE, PUBLIC])


def move_access_check_back(db_url: str, minutes: float) -> None:
    async def work(s):
        table = SyncCursor.__table__
        await s.execute(
            sa.update(SyncCursor)
            .where(table.c.access_check_at.is_not(None))
            .values(access_check_at=utcnow() - timedelta(minutes=minutes))
        )

    run(_with_session(db_url, work))


def forget_cursors(db_url: str, user_id: str) -> None:
    """As if the user's projects had never synced: the next sync is a first one."""

    async def work(s):
        await s.execute(sa.delete(SyncCursor).where(SyncCursor.user_id == user_id))
        await s.execute(sa.delete(LastSync).where(LastSync.userId == user_id))

    run(_with_session(db_url, work))


def requests_by(sim: SimulatorServer, username: str) -> list[dict[str, Any]]:
    return [r for r in sim.world.requests() if r["username"] == username]


# --- access loss ------------------------------------------------------------------------------


async def test_removed_member_loses_the_project_then_readded_gets_it_back(db_url, sim, users):
    alice, bob = users["alice"], users["bob"]
    async with service(settings_for(db_url, sim)) as svc:
        await svc.poll()
        both_equal_truth(db_url, sim, users)
        before_alice = event_ids(db_url, alice)
        before_bob = project_event_ids(db_url, bob, sim, PRIVATE)
        assert len(before_bob) == EVENTS_PER_PROJECT

        sim.world.remove_member(PRIVATE, "bob")
        sim.world.clear_requests()
        # First run: refused while the token works. Recorded, reported, nothing removed.
        first = await svc.poll()
        b = user_result(first, bob)
        assert b["status"] == "failed" and b["removed"] == 0 and b["access_lost"] == []
        assert [(f["gitlab_project_id"], f["error"]) for f in b["failed_projects"]] == [
            ("1", "GitLabNotFound")
        ]
        assert project_event_ids(db_url, bob, sim, PRIVATE) == before_bob
        status = await svc.project_status(bob, PRIVATE)
        assert status["access_check_at"] is not None and status["access_lost_at"] is None
        checks = [r["path"] for r in requests_by(sim, "bob") if r["path"] in ("/api/v4/user",)]
        assert checks == ["/api/v4/user"]

        # Second run (ACCESS_LOSS_CONFIRM_MINUTES=0): confirmed, the events go.
        second = await svc.poll()
        b = user_result(second, bob)
        assert b["status"] == "processed", b
        assert b["removed"] == EVENTS_PER_PROJECT
        assert second["events"]["removed"] == EVENTS_PER_PROJECT
        assert [p["gitlab_project_id"] for p in b["access_lost"]] == ["1"]
        assert project_event_ids(db_url, bob, sim, PRIVATE) == set()
        both_equal_truth(db_url, sim, users)
        assert event_ids(db_url, alice) == before_alice  # the other member keeps hers
        status = await svc.project_status(bob, PRIVATE)
        assert status["access_lost_at"] is not None and status["cursor_at"] is None
        assert (
            query(db_url, 'SELECT count(*) FROM "MonitoredProject" WHERE "userId" = :u', u=bob)[0][
                0
            ]
            == 2
        )  # the monitored project stays

        # While lost: one request for the project per run, still reported, nothing else.
        sim.world.clear_requests()
        third = await svc.poll()
        assert user_result(third, bob)["access_lost"][0]["gitlab_project_id"] == "1"
        bob_private = [r["path"] for r in requests_by(sim, "bob") if "/projects/1" in r["path"]]
        assert bob_private == ["/api/v4/projects/1"]

        # Access returns: the project is backfilled like a newly added one.
        sim.world.add_member(PRIVATE, "bob")
        back = await svc.poll()
        b = user_result(back, bob)
        assert b["status"] == "processed" and b["access_lost"] == []
        assert b["stored"] == EVENTS_PER_PROJECT
        both_equal_truth(db_url, sim, users)
        status = await svc.project_status(bob, PRIVATE)
        assert status["access_lost_at"] is None and status["cursor_at"] is not None


async def test_access_loss_waits_for_the_confirmation_window(db_url, sim, users):
    alice = users["alice"]
    settings = settings_for(db_url, sim, access_loss_confirm_minutes=30)
    async with service(settings) as svc:
        await svc.poll()
        before = project_event_ids(db_url, alice, sim, OTHER)
        sim.world.delete_project(OTHER)
        for _ in range(2):  # the first confirmation, then one inside the window
            s = await svc.poll()
            assert user_result(s, alice)["removed"] == 0
            assert project_event_ids(db_url, alice, sim, PRIVATE)
        assert {e for e in event_ids(db_url, alice) if e in before} == before
        # 31 minutes later (the first confirmation moved back): the second one removes.
        move_access_check_back(db_url, 31)
        s = await svc.poll()
        a = user_result(s, alice)
        assert a["status"] == "processed" and a["removed"] == EVENTS_PER_PROJECT
        assert not before & event_ids(db_url, alice)
        assert_equal_truth(db_url, alice, sim, "alice", [PRIVATE, PUBLIC])


@pytest.mark.parametrize("problem", ["revoked", "insufficient_scope"])
async def test_a_token_problem_never_counts_as_access_loss(db_url, sim, users, problem):
    bob = users["bob"]
    settings = settings_for(db_url, sim, reconcile_interval_hours=EVERY_RUN)
    async with service(settings) as svc:
        await svc.poll()
        before = event_ids(db_url, bob)
        sim.world.remove_member(PRIVATE, "bob")
        sim.world.delete_item(PUBLIC, "issue", 1)
        if problem == "revoked":
            sim.world.revoke_token(sim.token("bob"))
        else:
            sim.world.add_fault(kind="status", status=403, path=r"^/api/v4/")
        for _ in range(3):
            s = await svc.poll()
            b = user_result(s, bob)
            assert (b["status"], b["reason"]) == ("skipped", f"token_{problem}"), b
            assert b["removed"] == 0
        assert event_ids(db_url, bob) == before
        status = await svc.project_status(bob, PRIVATE)
        assert status["access_check_at"] is None and status["access_lost_at"] is None


# --- reconciliation ---------------------------------------------------------------------------


async def test_reconciliation_removes_what_vanished_and_keeps_moved_issues(db_url, sim, users):
    w = sim.world
    settings = settings_for(db_url, sim, reconcile_interval_hours=EVERY_RUN)
    async with service(settings) as svc:
        first = await svc.poll()
        assert first["reconciliation"]["projects"] == 0  # first syncs only schedule it
        both_equal_truth(db_url, sim, users)
        # bob reads the public project as a non-member: an issue made confidential leaves
        # his events (and its comments), alice (a member) keeps it.
        w.update_issue(PUBLIC, 2, confidential=True)
        w.delete_item(PRIVATE, "issue", 3)
        w.delete_item(PRIVATE, "merge_request", 1)
        kept_issue = w.item(PRIVATE, "issue", 4)
        w.delete_note(kept_issue.notes[0].id)  # its parent's updated_at does not move
        w.move_issue(PRIVATE, 5, OTHER)
        sim.world.clear_requests()

        s = await svc.poll()
        a, b = user_result(s, users["alice"]), user_result(s, users["bob"])
        both_equal_truth(db_url, sim, users)
        # issue 3 (3 events) + MR 1 (2) + one comment, for both; bob also the now
        # confidential issue with its two comments.
        assert a["removed"] == 6 and b["removed"] == 9
        assert s["events"]["removed"] == 15
        assert a["reconciliation"]["projects"] == 3 and b["reconciliation"]["projects"] == 2
        assert s["reconciliation"]["held"] == 0 and s["reconciliation"]["failed"] == 0
        moved = w.item(PRIVATE, "issue", 5)
        assert moved.state == "closed" and moved.moved_to_id is not None
        assert f"issue-{moved.id}" in event_ids(db_url, users["bob"])
        # The cost, counted apart from the sync's: 10 listings (2 per pair), the notes of
        # the item that lost a comment (once per user), and one request per removal
        # confirmed (3 for alice, 4 for bob).
        assert s["reconciliation"]["requests"] == 10 + 2 + 7
        assert (await svc.project_status(users["bob"], PUBLIC))["reconciled_at"] is not None

        # Nothing changed: the next reconciliation only lists (no notes, no checks).
        s = await svc.poll()
        assert s["events"]["removed"] == 0 and s["reconciliation"]["projects"] == 5
        assert s["reconciliation"]["requests"] == 10
        both_equal_truth(db_url, sim, users)


async def test_reconciliation_never_moves_a_cursor_or_last_sync(db_url, sim, users, engine):
    settings = settings_for(db_url, sim, reconcile_interval_hours=EVERY_RUN)
    async with service(settings) as svc:
        await svc.poll()
        await svc.poll()
    sim.world.delete_item(PRIVATE, "issue", 2)
    sm = create_sessionmaker(engine)
    alice = users["alice"]
    marks = "SELECT gitlab_project_id, cursor_at FROM sync_cursor WHERE user_id = :u ORDER BY 1"
    before = (query(db_url, marks, u=alice), query(db_url, 'SELECT * FROM "LastSync"'))
    async with sm() as s:
        cursors = await repo.get_cursors(s, alice)
        projects = await repo.list_projects(s, alice)
    http = create_http_client(settings)
    result = UserResult(user_id=alice, status="processed")
    try:
        deps = SyncDeps(settings=settings, sessionmaker=sm, http=http)
        await reconcile_due(deps, alice, sim.token("alice"), cursors, projects, result)
    finally:
        await http.aclose()
    assert result.reconciliation.projects == 3 and result.removed == 3
    assert (query(db_url, marks, u=alice), query(db_url, 'SELECT * FROM "LastSync"')) == before
    assert_equal_truth(db_url, alice, sim, "alice", [PRIVATE, PUBLIC, OTHER])


FAULTS = [
    {"kind": "status", "status": 502},
    {"kind": "rate_limit", "retry_after": 1},
    {"kind": "slow", "delay": 1.5},
    {"kind": "drop"},
    {"kind": "malformed"},
    {"kind": "truncated"},
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f["kind"])
async def test_a_failed_page_of_a_reconciliation_removes_nothing(db_url, sim, users, fault):
    """Four items per page: the five issues left take two pages, and only a reconciliation
    (a complete listing) asks for the second one."""
    settings = settings_for(
        db_url,
        sim,
        reconcile_interval_hours=EVERY_RUN,
        gitlab_per_page=4,
        gitlab_read_timeout=0.5,
    )
    async with service(settings) as svc:
        await svc.poll()
        deleted = sim.world.item(PRIVATE, "issue", 6)  # newest: on the first page
        sim.world.delete_item(PRIVATE, "issue", 6)
        sim.world.add_fault(path=rf"^/api/v4/projects/{PRIVATE}/issues$", min_page=2, **fault)
        s = await svc.poll()
        for name in ("alice", "bob"):
            u = user_result(s, users[name])
            assert u["status"] == "processed" and u["removed"] == 0, u
            assert u["reconciliation"]["failed"] == 1
            assert f"issue-{deleted.id}" in event_ids(db_url, users[name])
        sim.world.clear_faults()
        s = await svc.poll()  # due again (after min(interval, 1 h)): complete this time
        assert s["events"]["removed"] == 2 * 3 and s["reconciliation"]["failed"] == 0
        both_equal_truth(db_url, sim, users)


@pytest.mark.parametrize("repeated", [False, True], ids=["once", "twice"])
async def test_an_incident_answering_empty_lists(db_url, sim, users, repeated):
    settings = settings_for(db_url, sim, reconcile_interval_hours=EVERY_RUN)
    incident = {"kind": "empty", "path": rf"^/api/v4/projects/{PUBLIC}/(issues|merge_requests)$"}
    alice, bob = users["alice"], users["bob"]
    async with service(settings) as svc:
        await svc.poll()
        public = {u: project_event_ids(db_url, users[u], sim, PUBLIC) for u in ("alice", "bob")}
        sim.world.add_fault(**incident)
        s = await svc.poll()
        assert s["events"]["removed"] == 0 and s["reconciliation"]["held"] == 2
        assert (await svc.project_status(alice, PUBLIC))["reconcile_held_at"] is not None
        assert project_event_ids(db_url, alice, sim, PUBLIC) == public["alice"]
        if not repeated:
            sim.world.clear_faults()
        s = await svc.poll()
        if not repeated:
            # GitLab answers again: the held removal is dropped, nothing was ever removed.
            assert s["events"]["removed"] == 0 and s["reconciliation"]["held"] == 0
            assert (await svc.project_status(alice, PUBLIC))["reconcile_held_at"] is None
            both_equal_truth(db_url, sim, users)
            return
        # The same answer twice: trusted, removed.
        assert user_result(s, alice)["removed"] == len(public["alice"])
        assert user_result(s, bob)["removed"] == len(public["bob"])
        assert project_event_ids(db_url, bob, sim, PUBLIC) == set()
        # When GitLab lists the items again, reconciliation stores them back.
        sim.world.clear_faults()
        s = await svc.poll()
        assert user_result(s, alice)["stored"] == len(public["alice"])
        both_equal_truth(db_url, sim, users)


async def test_a_readded_member_of_a_public_project_sees_confidential_issues_again(
    db_url, sim, users
):
    """No edit reveals them to the incremental sync: reconciliation stores what it lists."""
    w = sim.world
    with in_the_past(w, hours=2):
        w.update_issue(PUBLIC, 1, confidential=True)
    w.add_member(PUBLIC, "bob")
    settings = settings_for(db_url, sim, reconcile_interval_hours=EVERY_RUN)
    async with service(settings) as svc:
        await svc.poll()
        both_equal_truth(db_url, sim, users)
        w.remove_member(PUBLIC, "bob")
        s = await svc.poll()
        assert user_result(s, users["bob"])["removed"] == 3
        both_equal_truth(db_url, sim, users)
        w.add_member(PUBLIC, "bob")
        s = await svc.poll()
        assert user_result(s, users["bob"])["stored"] == 3
        both_equal_truth(db_url, sim, users)


# --- deleted comments on a complete notes read -------------------------------------------------


async def test_a_complete_notes_read_removes_deleted_comments(db_url, sim, users):
    """Reconciliation off: the first sync of a project (no cursor, SYNC_BACKFILL_DAYS=0)
    reads every item's notes whole, and a stored comment they lack goes."""
    alice = users["alice"]
    async with service(settings_for(db_url, sim)) as svc:
        await svc.poll()
        note = sim.world.item(PRIVATE, "issue", 2).notes[1]
        sim.world.delete_note(note.id)
        s = await svc.poll()  # incremental: the deletion is invisible to it
        assert s["events"]["removed"] == 0 and f"note-{note.id}" in event_ids(db_url, alice)
        forget_cursors(db_url, alice)
        sim.world.clear_requests()
        s = await svc.poll()
        assert user_result(s, alice)["removed"] == 1
        single = [r["path"] for r in requests_by(sim, "alice") if r["path"].endswith(f"/{note.id}")]
        assert single == [f"/api/v4/projects/{PRIVATE}/issues/2/notes/{note.id}"]
        assert_equal_truth(db_url, alice, sim, "alice", [PRIVATE, PUBLIC, OTHER])
        # bob's notes were not read whole: his copy waits for a reconciliation.
        assert f"note-{note.id}" in event_ids(db_url, users["bob"])


def test_settings_defaults() -> None:
    s = load_settings(database_url="sqlite+aiosqlite:///unused.db")
    assert (s.access_loss_confirm_minutes, s.reconcile_interval_hours) == (30, 24.0)
    assert s.reconcile_max_removals == 1000
