"""POST /api/poll end to end: uvicorn on 127.0.0.1, the GitLab simulator over real HTTP, a real
database (SQLite and PostgreSQL). The "Event" table is compared with the simulator's truth."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gitlab_sim.server import SimulatorServer
from tests.support import (
    LiveServer,
    add_project,
    add_user,
    assert_equal_truth,
    make_settings,
    oauth_settings,
    project_tuple,
    query,
    stored_events,
)


def by_user(summary: dict[str, Any]) -> dict[str, dict]:
    return {u["user_id"]: u for u in summary["users"]}


@pytest.fixture
def sim():
    # Projects 1 (private: user1-3), 2 (public: user1-3), 3 (private: user3, user4),
    # 4 (public: user1, user4) with confidential issues; see generate_world(seed=3).
    with SimulatorServer(seed=3, users=4, projects=4, issues=12, merge_requests=6, notes=3) as s:
        yield s


def test_first_sync_then_incremental_restores_exact_equality(db_url, sim):
    w = sim.world
    # user1 monitors a project it cannot see (3): reported, the others still sync.
    u1 = add_user(
        db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, p) for p in (1, 2, 3, 4)]
    )
    # user2 shares projects 1 and 2 with user1; it adds project 4 (old history) later.
    u2 = add_user(
        db_url, "u2@example.com", sim.token("user2"), [project_tuple(sim, p) for p in (1, 2)]
    )
    u3 = add_user(db_url, "u3@example.com", None, [project_tuple(sim, 2)])
    confidential = [i for i in w.project(4).index("issue").by_iid.values() if i.confidential]
    assert confidential, "the seed must hold confidential issues in project 4"

    settings = make_settings(db_url, sim.url)
    with LiveServer(settings) as server:
        r = server.poll()
        assert r.status_code == 200, r.text
        s = r.json()
        assert (s["processed"], s["failed"], s["skipped"], s["total"]) == (1, 1, 1, 3)
        assert s["success"] is True
        users = by_user(s)
        assert users[u2]["status"] == "processed"
        assert users[u3] == {**users[u3], "status": "skipped", "reason": "no_token"}
        assert users[u1]["status"] == "failed"
        assert [f["gitlab_project_id"] for f in users[u1]["failed_projects"]] == ["3"]
        assert users[u1]["failed_projects"][0]["error"] == "GitLabNotFound"

        assert_equal_truth(db_url, u1, sim, "user1", [1, 2, 4])
        assert_equal_truth(db_url, u2, sim, "user2", [1, 2])
        stored_u1 = {e["gitlabEventId"] for e in stored_events(db_url, u1)}
        assert {f"issue-{i.id}" for i in confidential} <= stored_u1
        # The summary's numbers are what the table holds.
        assert s["events"]["stored"] == len(stored_events(db_url)) and s["events"]["updated"] == 0
        assert users[u1]["stored"] == len(stored_u1)
        # LastSync only for the user whose projects all synced; cursors for synced projects.
        last = dict(query(db_url, 'SELECT "userId", "lastSyncAt" FROM "LastSync"'))
        assert set(last) == {u2}
        cursors = query(
            db_url,
            "SELECT gitlab_project_id, cursor_at, last_error FROM sync_cursor WHERE user_id = :u",
            u=u1,
        )
        by_pid = {c[0]: c for c in cursors}
        assert by_pid["3"][1] is None and "404" in by_pid["3"][2]
        assert all(by_pid[p][1] is not None for p in ("1", "2", "4"))

        # --- mutations, then one incremental run ------------------------------------------
        old_issue = w.project(2).index("issue").by_iid[1]
        w.update_issue(2, old_issue.iid, title="Edited title ✓", labels=["bug", "a, b"])
        new_issue = w.create_issue(1, "Brand new issue", description="with\nlines")
        w.add_note(1, "issue", new_issue.iid, "First comment on the new issue")
        w.create_merge_request(4, "A new MR", description=None)
        old_mr = w.project(1).index("merge_request").by_iid[2]
        w.add_note(1, "merge_request", old_mr.iid, "a comment on an old MR " + "x" * 150)
        # Comment on an item touched less than a minute ago: GitLab does not touch it again.
        touched = w.project(2).index("issue").by_iid[2]
        w.update_issue(2, touched.iid, description="touched just now")
        before = touched.updated_ms
        w.add_note(2, "issue", touched.iid, "inside the throttled-touch window")
        assert touched.updated_ms == before
        # A project added to monitoring later gets its whole history, not just recent changes.
        newp = w.create_project("late/added", members=["user2"], visibility="private")
        for n in range(3):
            it = w.create_issue(newp.id, f"late issue {n}")
            w.add_note(newp.id, "issue", it.iid, f"late comment {n}")
        add_project(db_url, u2, *project_tuple(sim, newp.id))
        add_project(db_url, u2, *project_tuple(sim, 4))
        oldest = min(i.updated_ms for i in w.project(4).index("issue").by_iid.values())
        assert oldest < time.time() * 1000 - 86_400_000, "project 4 must hold old history"

        r = server.poll()
        assert r.status_code == 200, r.text
        s2 = r.json()
        assert by_user(s2)[u2]["status"] == "processed"
        assert_equal_truth(db_url, u1, sim, "user1", [1, 2, 4])
        assert_equal_truth(db_url, u2, sim, "user2", [1, 2, 4, newp.id])
        # Confidential issues of project 4 reach its member (user1), not user2.
        stored_u2 = {e["gitlabEventId"] for e in stored_events(db_url, u2)}
        assert not {f"issue-{i.id}" for i in confidential} & stored_u2
        # Edited items were rewritten, unchanged ones were not: updated counts only the edit(s).
        assert by_user(s2)[u2]["updated"] >= 2  # the edited title + the touched description
        assert by_user(s2)[u2]["updated"] <= 3
        assert s2["events"]["stored"] == len(stored_events(db_url)) - s["events"]["stored"]


def test_token_refresh_when_configured_and_skip_when_not(db_url, sim):
    w = sim.world
    grant = w.create_oauth_tokens("user4")
    w.expire_token(grant["access_token"])
    past = datetime.now(UTC) - timedelta(minutes=5)
    u4 = add_user(
        db_url,
        "u4@example.com",
        grant["access_token"],
        [project_tuple(sim, 4)],
        refresh_token=grant["refresh_token"],
        expires_at=past,
    )

    # Not configured: skipped "token_expired", as the original did.
    with LiveServer(make_settings(db_url, sim.url)) as server:
        s = server.poll().json()
    assert by_user(s)[u4]["status"] == "skipped"
    assert by_user(s)[u4]["reason"] == "token_expired"
    assert stored_events(db_url, u4) == []

    settings = oauth_settings(db_url, sim)
    with LiveServer(settings) as server:
        s = server.poll().json()
    assert by_user(s)[u4]["status"] == "processed", s
    assert_equal_truth(db_url, u4, sim, "user4", [4])
    (access, refresh, expires) = query(
        db_url,
        'SELECT "accessToken", "refreshToken", "accessTokenExpiresAt" FROM account '
        'WHERE "userId" = :u',
        u=u4,
    )[0]
    assert access != grant["access_token"] and refresh != grant["refresh_token"]
    assert w.token_record(grant["refresh_token"]).revoked
    assert not w.token_record(refresh).revoked
    # The stored pair is the usable one.
    assert w.token_record(access) is not None and not w.token_record(access).revoked


def test_expired_token_detected_by_401_is_refreshed(db_url, sim):
    """No expiry stored, but GitLab says the token expired: refresh, then sync."""
    w = sim.world
    grant = w.create_oauth_tokens("user1")
    w.expire_token(grant["access_token"])
    u1 = add_user(
        db_url,
        "u1@example.com",
        grant["access_token"],
        [project_tuple(sim, 2)],
        refresh_token=grant["refresh_token"],
    )
    settings = oauth_settings(db_url, sim)
    with LiveServer(settings) as server:
        s = server.poll().json()
    assert by_user(s)[u1]["status"] == "processed", s
    assert_equal_truth(db_url, u1, sim, "user1", [2])


def test_revoked_token_is_skipped_with_reason(db_url, sim):
    w = sim.world
    grant = w.create_oauth_tokens("user1")
    w.revoke_token(grant["access_token"])
    u1 = add_user(db_url, "u1@example.com", grant["access_token"], [project_tuple(sim, 2)])
    with LiveServer(make_settings(db_url, sim.url)) as server:
        s = server.poll().json()
    assert by_user(s)[u1]["status"] == "skipped"
    assert by_user(s)[u1]["reason"] == "token_revoked"


def test_overlapping_polls_never_sync_a_user_twice_at_once(db_url, sim):
    sim.world.configure(latency_ms=40)
    ids = [
        add_user(db_url, f"u{i}@example.com", sim.token(f"user{i}"), [project_tuple(sim, 2)])
        for i in (1, 2, 3)
    ]
    with LiveServer(make_settings(db_url, sim.url)) as server:
        results: list[dict] = []

        def call(body):
            results.append(server.poll(body).json())

        threads = [
            threading.Thread(target=call, args=(None,)),
            threading.Thread(target=call, args=({"user_ids": ids[:2]},)),
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join()
    statuses: dict[str, list[tuple[str, str | None]]] = {}
    for s in results:
        for u in s["users"]:
            statuses.setdefault(u["user_id"], []).append((u["status"], u["reason"]))
    # Users 1 and 2 were in both runs: one synced them, the other found the lease taken.
    for uid in ids[:2]:
        assert sorted(statuses[uid]) == [("processed", None), ("skipped", "in_progress")], statuses
    for uid in ids:
        assert_equal_truth(db_url, uid, sim, f"user{ids.index(uid) + 1}", [2])
    assert query(db_url, "SELECT count(*) FROM sync_lease") == [(0,)]


def test_manual_refresh_of_a_fresh_user_is_skipped(db_url, sim):
    u1 = add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 2)])
    settings = make_settings(db_url, sim.url, min_refresh_interval_seconds=60)
    with LiveServer(settings) as server:
        first = server.poll({"user_ids": [u1]}).json()
        assert by_user(first)[u1]["status"] == "processed"
        sim.world.clear_requests()
        again = server.poll({"user_ids": [u1, "no-such-user"]}).json()
        assert by_user(again)[u1]["reason"] == "fresh"
        assert by_user(again)["no-such-user"]["reason"] == "not_found"
        assert sim.world.requests() == []  # GitLab was not asked anything
        # The scheduled run is not a manual refresh: it syncs.
        assert by_user(server.poll().json())[u1]["status"] == "processed"
    runs = query(db_url, "SELECT trigger, success, total FROM poll_run ORDER BY started_at")
    assert [r[2] for r in runs] == [1, 2, 1]
