"""The database going away mid-run and the service being SIGKILLed mid-run: affected users
fail, nothing half-written moves a cursor, no lease stays stuck, and the next run restores
exact equality with the simulator's ground truth. PostgreSQL only: the outage is made by
refusing and terminating connections to this test's own database (never the shared cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gitlab_sim.server import SimulatorServer
from tests.reliability.helpers import ServiceProcess, check_all_horizons
from tests.support import (
    LiveServer,
    add_user,
    assert_equal_truth,
    make_settings,
    project_tuple,
    query,
)


def _admin(db_url: str, *sql: str) -> None:
    """Run statements from the cluster's `postgres` database (the test database may be shut)."""
    parts = urlsplit(db_url.replace("+asyncpg", ""))
    dsn = urlunsplit(parts._replace(path="/postgres"))

    async def go() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            for stmt in sql:
                await conn.execute(stmt)
        finally:
            await conn.close()

    asyncio.run(go())


def _dbname(db_url: str) -> str:
    return urlsplit(db_url).path.lstrip("/")


def _seed_users(db_url: str, sim: SimulatorServer, n: int) -> dict[str, tuple[str, list[int]]]:
    users = {}
    for i in range(1, n + 1):
        name = f"user{i}"
        u = sim.world.user(name)
        pids = [p.id for p in sim.world.projects.values() if sim.world.can_see_project(p, u)][:2]
        uid = add_user(
            db_url, f"{name}@example.com", sim.token(name), [project_tuple(sim, p) for p in pids]
        )
        users[uid] = (name, pids)
    return users


_DONE_AND_IN_FLIGHT = (
    'SELECT (SELECT count(*) FROM "LastSync") >= 3 AND (SELECT count(*) FROM sync_lease) > 0'
)


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
def test_database_outage_mid_run_fails_users_and_next_run_restores_equality(pg_url):
    db = _dbname(pg_url)
    with SimulatorServer(
        seed=21, users=12, projects=4, issues=16, merge_requests=6, notes=2
    ) as sim:
        sim.world.configure(latency_ms=15)
        users = _seed_users(pg_url, sim, 12)
        settings = make_settings(
            pg_url,
            sim.url,
            gitlab_per_page=5,
            poll_concurrency=4,
            user_sync_attempts=2,
            lease_ttl_seconds=2,
            db_pool_timeout=2,
        )
        with LiveServer(settings) as server:
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(r=server.poll(timeout=120)))
            t.start()
            # Let some users store something first, then take the database away.
            assert _wait_for(lambda: query(pg_url, 'SELECT count(*) FROM "Event"')[0][0] > 0, 60)
            _admin(
                pg_url,
                f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false',
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{db}' AND pid <> pg_backend_pid()",
            )
            try:
                time.sleep(1.5)
            finally:
                _admin(pg_url, f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
            t.join(timeout=120)
            assert not t.is_alive()
            r = result["r"]
            assert r.status_code in (200, 503), r.text
            s = r.json()
            if r.status_code == 200:
                assert s["failed"] > 0, "the outage should have failed the users in flight"
                reasons = {u["reason"] for u in s["users"] if u["status"] == "failed"}
                assert reasons <= {"database_unavailable", "error", "projects_failed"}, reasons
            # Nothing half-written moved a cursor or LastSync.
            problems, checked = check_all_horizons(pg_url, sim, users)
            assert not problems, problems[:5]

            time.sleep(settings.lease_ttl_seconds + 0.5)  # leases whose release failed expire
            r = server.poll(timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["processed"] == len(users), r.json()
        for uid, (name, pids) in users.items():
            assert_equal_truth(pg_url, uid, sim, name, pids)


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_restores_equality_without_stuck_leases(pg_url, tmp_path):
    with SimulatorServer(
        seed=22, users=30, projects=6, issues=20, merge_requests=6, notes=2
    ) as sim:
        sim.world.configure(latency_ms=10)
        users = _seed_users(pg_url, sim, 30)
        env = {
            "gitlab_per_page": 5,
            "poll_concurrency": 5,
            "lease_ttl_seconds": 2,
            "lease_backend": "table",  # lease rows (transaction-mode poolers); advisory: below
        }
        first = ServiceProcess(pg_url, sim.url, tmp_path, **env).start()
        try:
            t = threading.Thread(target=lambda: _swallow(first.poll, 120), daemon=True)
            t.start()
            # Kill once some users are done and others are in flight (holding lease rows).
            assert first.kill_when(lambda: query(pg_url, _DONE_AND_IN_FLIGHT)[0][0], 90)
        finally:
            first.stop()
        t.join(timeout=30)
        synced = query(pg_url, 'SELECT count(*) FROM "LastSync"')[0][0]
        assert synced < len(users), "the run finished before the kill; nothing was tested"
        problems, _ = check_all_horizons(pg_url, sim, users)
        assert not problems, problems[:5]
        # The killed run left its leases behind...
        assert query(pg_url, "SELECT count(*) FROM sync_lease")[0][0] > 0
        unfinished = query(pg_url, "SELECT count(*) FROM poll_run WHERE finished_at IS NULL")
        assert unfinished == [(1,)]

        time.sleep(2.5)  # ...which expire after LEASE_TTL_SECONDS.
        with ServiceProcess(pg_url, sim.url, tmp_path, **env) as second:
            r = second.poll(timeout=180)
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["processed"] == len(users), [u for u in s["users"] if u["status"] != "processed"]
        for uid, (name, pids) in users.items():
            assert_equal_truth(pg_url, uid, sim, name, pids)
        assert query(pg_url, "SELECT count(*) FROM sync_lease") == [(0,)]


def _advisory_locks(db_url: str) -> int:
    """Advisory locks held in this test's database (the service's user claims)."""
    return query(
        db_url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )[0][0]


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_syncs_every_user_at_once_with_advisory_locks(
    pg_url, tmp_path
):
    """The default lease on PostgreSQL: the killed process's locks go with its connections,
    so the restarted service's first poll syncs every user (none skipped as in_progress),
    however long LEASE_TTL_SECONDS is."""
    with SimulatorServer(
        seed=23, users=30, projects=6, issues=20, merge_requests=6, notes=2
    ) as sim:
        sim.world.configure(latency_ms=10)
        users = _seed_users(pg_url, sim, 30)
        env = {"gitlab_per_page": 5, "poll_concurrency": 5, "lease_ttl_seconds": 3600}
        first = ServiceProcess(pg_url, sim.url, tmp_path, **env).start()
        try:
            t = threading.Thread(target=lambda: _swallow(first.poll, 120), daemon=True)
            t.start()
            # Kill once some users are done and others are in flight (holding their locks).
            assert first.kill_when(
                lambda: (
                    query(pg_url, 'SELECT count(*) FROM "LastSync"')[0][0] >= 3
                    and _advisory_locks(pg_url) > 0
                ),
                90,
            )
        finally:
            first.stop()
        t.join(timeout=30)
        assert query(pg_url, 'SELECT count(*) FROM "LastSync"')[0][0] < len(users)
        problems, _ = check_all_horizons(pg_url, sim, users)
        assert not problems, problems[:5]
        assert query(pg_url, "SELECT count(*) FROM sync_lease") == [(0,)]  # no rows to expire
        # PostgreSQL ends the dead process's sessions as soon as it sees their sockets closed.
        assert _wait_for(lambda: _advisory_locks(pg_url) == 0, 30)
        with ServiceProcess(pg_url, sim.url, tmp_path, **env) as second:
            r = second.poll(timeout=180)
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["processed"] == len(users), [u for u in s["users"] if u["status"] != "processed"]
        for uid, (name, pids) in users.items():
            assert_equal_truth(pg_url, uid, sim, name, pids)
        assert _advisory_locks(pg_url) == 0  # every lock was given back


def _swallow(fn, timeout: float) -> None:
    with contextlib.suppress(Exception):  # the server is killed under this request
        fn(timeout=timeout)
