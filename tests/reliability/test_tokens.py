"""Token faults: a token revoked mid-run, the refresh endpoint failing, a refresh token that
was already used. The account never loses a usable token pair it had; otherwise the user is
skipped (or failed, when GitLab is down) with a clear reason, and other users still sync."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from gitlab_sim.faults import FaultSpec
from gitlab_sim.server import SimulatorServer
from tests.reliability.helpers import check_all_horizons, execute
from tests.support import (
    LiveServer,
    add_user,
    assert_equal_truth,
    make_settings,
    oauth_settings,
    project_tuple,
    query,
)


def _pair(db_url: str, user_id: str) -> tuple[str, str | None]:
    [(access, refresh)] = query(
        db_url, 'SELECT "accessToken", "refreshToken" FROM account WHERE "userId" = :u', u=user_id
    )
    return access, refresh


def _by_user(summary: dict) -> dict[str, dict]:
    return {u["user_id"]: u for u in summary["users"]}


def test_token_revoked_mid_run_skips_that_user_only(db_url):
    with SimulatorServer(seed=31, users=3, projects=3, issues=20, merge_requests=5, notes=2) as sim:
        w = sim.world
        w.configure(latency_ms=10)
        victim_token = sim.token("user1")
        users = {}
        for i in (1, 2, 3):
            name = f"user{i}"
            pids = [p.id for p in w.projects.values() if w.can_see_project(p, w.user(name))]
            uid = add_user(
                db_url, f"{name}@x.org", sim.token(name), [project_tuple(sim, p) for p in pids]
            )
            users[uid] = (name, pids)
        victim = next(u for u, (n, _) in users.items() if n == "user1")

        def revoke_after_first_pages() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if sum(1 for e in w.requests() if e["username"] == "user1") >= 3:
                    w.revoke_token(victim_token)
                    return
                time.sleep(0.005)

        with LiveServer(make_settings(db_url, sim.url, gitlab_per_page=4)) as server:
            t = threading.Thread(target=revoke_after_first_pages, daemon=True)
            t.start()
            r = server.poll()
            t.join(timeout=30)
        assert r.status_code == 200, r.text
        res = _by_user(r.json())
        assert res[victim]["status"] == "skipped", res[victim]
        assert res[victim]["reason"] == "token_revoked"
        assert all(res[u]["status"] == "processed" for u in users if u != victim)
        # What was stored before the revocation stays; no cursor passed unstored data.
        problems, _ = check_all_horizons(db_url, sim, users)
        assert not problems, problems[:5]
        assert query(db_url, 'SELECT count(*) FROM "LastSync" WHERE "userId" = :u', u=victim) == [
            (0,)
        ]
        # The token is kept as it was (nothing better exists); the user can re-authorize.
        assert _pair(db_url, victim)[0] == victim_token
        for uid, (name, pids) in users.items():
            if uid != victim:
                assert_equal_truth(db_url, uid, sim, name, pids)


def test_refresh_endpoint_failing_keeps_the_pair_and_recovers(db_url):
    with SimulatorServer(seed=32, users=2, projects=2, issues=5, merge_requests=2, notes=1) as sim:
        w = sim.world
        grant = w.create_oauth_tokens("user1")
        w.expire_token(grant["access_token"])
        pids = [p.id for p in w.projects.values() if w.can_see_project(p, w.user("user1"))]
        uid = add_user(
            db_url,
            "u1@x.org",
            grant["access_token"],
            [project_tuple(sim, p) for p in pids],
            refresh_token=grant["refresh_token"],
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        other = add_user(db_url, "u2@x.org", sim.token("user2"), [project_tuple(sim, 2)])
        before = _pair(db_url, uid)
        with LiveServer(oauth_settings(db_url, sim, gitlab_max_attempts=2)) as server:
            # 1. GitLab's token endpoint is down: the user fails (transient), pair untouched.
            for status in (500, 502, 503):
                w.add_fault(FaultSpec(kind="status", status=status, path=r"^/oauth/token$"))
                res = _by_user(server.poll().json())
                w.clear_faults()
                assert res[uid]["status"] == "failed", res[uid]
                assert res[uid]["reason"] == "gitlab_unavailable"
                assert res[other]["status"] == "processed"
                assert _pair(db_url, uid) == before
            # 2. Rate limited for good: same.
            w.add_fault(FaultSpec(kind="rate_limit", path=r"^/oauth/token$", retry_after=0))
            res = _by_user(server.poll().json())
            w.clear_faults()
            assert res[uid]["status"] == "failed" and _pair(db_url, uid) == before
            # 3. The endpoint is back: refreshed, stored, synced.
            res = _by_user(server.poll().json())
            assert res[uid]["status"] == "processed", res[uid]
            access, refresh = _pair(db_url, uid)
            assert access != before[0] and refresh != before[1]
            assert not w.token_record(access).revoked and not w.token_record(refresh).revoked
            assert_equal_truth(db_url, uid, sim, "user1", pids)
            # 4. GitLab rotates but its answer is lost (malformed): the service cannot store a
            # pair it never received; it keeps the stored pair instead of junk, and the
            # next run says plainly that the user must re-authorize.
            w.expire_token(access)
            execute(
                db_url,
                'UPDATE account SET "accessTokenExpiresAt" = :t WHERE "userId" = :u',
                t=datetime(2000, 1, 1),
                u=uid,
            )
            w.add_fault(FaultSpec(kind="malformed", path=r"^/oauth/token$", count=2))
            res = _by_user(server.poll().json())
            w.clear_faults()
            assert res[uid]["status"] == "failed", res[uid]
            assert _pair(db_url, uid) == (access, refresh)
            res = _by_user(server.poll().json())
            assert res[uid]["status"] == "skipped"
            assert res[uid]["reason"] == "token_refresh_failed"
            assert res[other]["status"] == "processed"


def test_reused_refresh_token_is_skipped_with_a_clear_reason(db_url):
    with SimulatorServer(seed=33, users=2, projects=2, issues=3, merge_requests=1, notes=1) as sim:
        w = sim.world
        grant = w.create_oauth_tokens("user1")
        app_cfg = w.describe()["oauth_app"]
        # Someone else (the original app, a restored backup) already spent this refresh token.
        status, _ = w.refresh_oauth(
            grant["refresh_token"], app_cfg["client_id"], app_cfg["client_secret"], None
        )
        assert status == 200
        uid = add_user(
            db_url,
            "u1@x.org",
            grant["access_token"],
            [project_tuple(sim, 2)],
            refresh_token=grant["refresh_token"],
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        other = add_user(db_url, "u2@x.org", sim.token("user2"), [project_tuple(sim, 2)])
        with LiveServer(oauth_settings(db_url, sim)) as server:
            s = server.poll().json()
        res = _by_user(s)
        assert res[uid]["status"] == "skipped"
        assert res[uid]["reason"] == "token_refresh_failed"
        assert res[other]["status"] == "processed"
        # One refresh attempt, no hammering; the stored pair is left for re-authorization.
        assert sum(1 for e in w.requests() if e["kind"] == "oauth_token") == 1
        assert _pair(db_url, uid) == (grant["access_token"], grant["refresh_token"])
        assert query(db_url, 'SELECT count(*) FROM "Event" WHERE "userId" = :u', u=uid) == [(0,)]


def test_concurrent_refresh_of_one_account_spends_the_refresh_token_once(pg_url):
    """Two servers (replicas) refresh the same expired account at the same moment: the row
    lock makes one rotate and the other reuse the stored result; the pair stays usable."""
    with SimulatorServer(seed=34, users=1, projects=1, issues=3, merge_requests=1, notes=1) as sim:
        w = sim.world
        grant = w.create_oauth_tokens("user1")
        w.expire_token(grant["access_token"])
        uid = add_user(
            pg_url,
            "u1@x.org",
            grant["access_token"],
            [project_tuple(sim, 1)],
            refresh_token=grant["refresh_token"],
            expires_at=datetime.now(UTC) - timedelta(minutes=1),
        )
        w.configure(latency_ms=50)  # widen the window in which both refresh
        settings = oauth_settings(pg_url, sim)
        with LiveServer(settings) as a, LiveServer(settings) as b:
            out: list[dict] = []
            threads = [
                threading.Thread(target=lambda s=s: out.append(s.poll().json())) for s in (a, b)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
        statuses = sorted(_by_user(s)[uid]["status"] for s in out)
        assert "processed" in statuses and "failed" not in statuses, out
        assert sum(1 for e in w.requests() if e["kind"] == "oauth_token") == 1
        access, refresh = _pair(pg_url, uid)
        assert not w.token_record(access).revoked and not w.token_record(refresh).revoked
        assert_equal_truth(pg_url, uid, sim, "user1", [1])
