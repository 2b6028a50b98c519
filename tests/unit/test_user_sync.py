"""app.sync.user_sync on SQLite and PostgreSQL against the simulator: the claim (fresh,
in_progress), a whole user's sync, and its attempts. Waits are switched off and inspected
with `app.retry.recorded_waits()`; GitLab's own per-request retries are kept out of the way
(GITLAB_MAX_ATTEMPTS=1) so every failure reaches the user-level attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import repository as repo
from app.db.models import LastSync, SyncLease, utcnow
from app.gitlab.transport import create_http_client
from app.retry import recorded_waits
from app.settings import Settings
from app.sync.deps import SyncDeps
from app.sync.lease import UserLease
from app.sync.results import UserSkipped
from app.sync.user_sync import claim_user, sync_user
from gitlab_sim.server import SimulatorServer
from tests.support import add_user, assert_equal_truth, make_settings, project_tuple, query

PIDS = (1, 2)


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(seed=31, users=2, projects=3, issues=6, merge_requests=3, notes=1) as s:
        yield s


@pytest.fixture
def user_id(db_url, sim) -> str:
    return add_user(
        db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, p) for p in PIDS]
    )


def settings_for(db_url: str, sim: SimulatorServer, **overrides: Any) -> Settings:
    # Lease rows, so tests can read and rewrite them (the advisory lock: test_lease.py).
    base = {"gitlab_max_attempts": 1, "lease_backend": "table"}
    return make_settings(db_url, sim.url, **{**base, **overrides})


@asynccontextmanager
async def sync_deps(settings: Settings, sessionmaker) -> AsyncIterator[SyncDeps]:
    http = create_http_client(settings)
    try:
        yield SyncDeps(settings=settings, sessionmaker=sessionmaker, http=http)
    finally:
        await http.aclose()


def lease_holders(db_url: str) -> list[tuple]:
    return query(db_url, "SELECT user_id, holder FROM sync_lease")


def last_syncs(db_url: str) -> list[tuple]:
    return query(db_url, 'SELECT "userId" FROM "LastSync"')


def requests_to(sim: SimulatorServer, path: str) -> int:
    return sum(1 for r in sim.world.requests() if r["path"] == path)


async def write_last_sync(deps: SyncDeps, user_id: str, age: timedelta) -> None:
    async with deps.sessionmaker() as s, s.begin():
        await repo.upsert_last_sync(s, user_id, utcnow() - age)
        await s.execute(
            sa.update(LastSync).where(LastSync.userId == user_id).values(updatedAt=utcnow() - age)
        )


# --- claim_user --------------------------------------------------------------------------------


async def test_fresh_user_is_skipped_only_for_manual_refreshes(db_url, sessionmaker, sim, user_id):
    settings = settings_for(db_url, sim, min_refresh_interval_seconds=300)
    async with sync_deps(settings, sessionmaker) as deps:
        await write_last_sync(deps, user_id, timedelta(seconds=5))
        with pytest.raises(UserSkipped) as skipped:
            await claim_user(deps, UserLease(deps, user_id, "manual-run"), manual=True)
        assert skipped.value.reason == "fresh"
        assert lease_holders(db_url) == []  # refused before the lease was taken
        claim = await claim_user(deps, UserLease(deps, user_id, "scheduled-run"), manual=False)
    assert [p.gitlabProjectId for p in claim.projects] == [str(p) for p in PIDS]
    assert claim.account is not None and claim.account.accessToken == sim.token("user1")
    assert claim.last_sync is not None
    assert lease_holders(db_url) == [(user_id, "scheduled-run")]


async def test_manual_refresh_after_the_interval_is_not_fresh(db_url, sessionmaker, sim, user_id):
    settings = settings_for(db_url, sim, min_refresh_interval_seconds=300)
    async with sync_deps(settings, sessionmaker) as deps:
        await write_last_sync(deps, user_id, timedelta(seconds=600))
        claim = await claim_user(deps, UserLease(deps, user_id, "manual-run"), manual=True)
    assert claim.last_sync is not None
    assert lease_holders(db_url) == [(user_id, "manual-run")]


async def test_user_held_by_another_run_is_in_progress(db_url, sessionmaker, sim, user_id):
    async with sync_deps(settings_for(db_url, sim), sessionmaker) as deps:
        async with deps.sessionmaker() as s, s.begin():
            assert await UserLease(deps, user_id, "other-run").acquire(s)
        for manual in (False, True):
            with pytest.raises(UserSkipped) as skipped:
                await claim_user(deps, UserLease(deps, user_id, "this-run"), manual=manual)
            assert skipped.value.reason == "in_progress"
        result = await sync_user(deps, user_id, "this-run")
    assert (result.status, result.reason, result.attempts) == ("skipped", "in_progress", 0)
    assert lease_holders(db_url) == [(user_id, "other-run")]  # never released by us
    assert sim.world.requests() == []


# --- sync_user -------------------------------------------------------------------------------


async def test_sync_user_end_to_end(db_url, sessionmaker, sim, user_id):
    async with sync_deps(settings_for(db_url, sim), sessionmaker) as deps:
        started = utcnow() - timedelta(milliseconds=1)
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
        finished = utcnow()
        async with deps.sessionmaker() as s:
            last = await repo.get_last_sync(s, user_id)
            cursors = await repo.get_cursors(s, user_id)
    assert (result.status, result.reason) == ("processed", None)
    assert (result.projects, result.attempts, result.failed_projects) == (2, 1, [])
    assert result.stored > 0 and result.updated == 0
    assert_equal_truth(db_url, user_id, sim, "user1", list(PIDS))
    assert last is not None and started <= last.lastSyncAt <= finished
    assert sorted(cursors) == [str(p) for p in PIDS]
    assert all(c.cursor_at is not None and c.last_error is None for c in cursors.values())
    assert lease_holders(db_url) == []  # released with LastSync
    assert waits == []


async def test_revoked_token_skips_the_user(db_url, sessionmaker, sim, user_id):
    sim.world.revoke_token(sim.token("user1"))
    async with sync_deps(settings_for(db_url, sim), sessionmaker) as deps:
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
    assert (result.status, result.reason, result.attempts) == ("skipped", "token_revoked", 1)
    assert waits == []  # not retried
    assert lease_holders(db_url) == [] and last_syncs(db_url) == []


async def test_transient_failures_are_retried_then_reported(db_url, sessionmaker, sim, user_id):
    attempts, base = 3, 2.0
    settings = settings_for(db_url, sim, user_sync_attempts=attempts, user_retry_backoff_base=base)
    sim.world.add_fault(kind="status", status=502, path=r"^/api/v4/projects/2/")
    async with sync_deps(settings, sessionmaker) as deps:
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
    assert (result.status, result.reason, result.attempts) == ("failed", "projects_failed", 3)
    (failure,) = result.failed_projects
    assert (failure.gitlab_project_id, failure.error, failure.status) == (
        "2",
        "GitLabUnavailable",
        502,
    )
    assert failure.project_path == project_tuple(sim, 2)[2]
    assert "502" in failure.message
    # One wait between attempts, each within the full-jitter bound of its retry.
    assert len(waits) == attempts - 1
    assert all(0 < w <= base * 2**i for i, w in enumerate(waits)), waits
    # Project 2 was tried once per attempt; project 1 synced in the first one and was left.
    assert requests_to(sim, "/api/v4/projects/2/issues") == attempts
    assert requests_to(sim, "/api/v4/projects/1/issues") == 1
    cursors = dict(query(db_url, "SELECT gitlab_project_id, cursor_at FROM sync_cursor"))
    assert cursors["1"] is not None and cursors["2"] is None
    (error,) = query(db_url, "SELECT last_error FROM sync_cursor WHERE gitlab_project_id = '2'")
    assert "502" in error[0]
    assert last_syncs(db_url) == [] and lease_holders(db_url) == []


async def test_transient_failure_that_clears_is_processed_on_a_later_attempt(
    db_url, sessionmaker, sim, user_id
):
    settings = settings_for(db_url, sim, user_sync_attempts=4, user_retry_backoff_base=1.0)
    sim.world.add_fault(kind="status", status=503, path=r"^/api/v4/projects/2/issues$", count=1)
    async with sync_deps(settings, sessionmaker) as deps:
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
    assert (result.status, result.attempts, result.failed_projects) == ("processed", 2, [])
    assert len(waits) == 1 and 0 < waits[0] <= 1.0
    assert_equal_truth(db_url, user_id, sim, "user1", list(PIDS))
    assert len(last_syncs(db_url)) == 1 and lease_holders(db_url) == []


@pytest.mark.parametrize(("retry_after", "expected_wait"), [(3, 3.0), (45, 7.0)])
async def test_rate_limited_attempt_waits_what_gitlab_asked_capped(
    db_url, sessionmaker, sim, user_id, retry_after, expected_wait
):
    # A large backoff base: had the backoff been used, the wait would almost surely differ.
    settings = settings_for(
        db_url, sim, user_retry_backoff_base=50.0, gitlab_rate_limit_max_wait=7.0
    )
    sim.world.add_fault(
        kind="rate_limit", retry_after=retry_after, path=r"^/api/v4/projects/1/issues$", count=1
    )
    async with sync_deps(settings, sessionmaker) as deps:
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
    assert waits == [expected_wait]
    assert (result.status, result.attempts) == ("processed", 2)
    assert_equal_truth(db_url, user_id, sim, "user1", list(PIDS))


async def test_rate_limit_that_persists_is_reported_with_gitlabs_wait(
    db_url, sessionmaker, sim, user_id
):
    settings = settings_for(
        db_url,
        sim,
        user_sync_attempts=2,
        user_retry_backoff_base=50.0,
        gitlab_rate_limit_max_wait=7.0,
    )
    sim.world.add_fault(kind="rate_limit", retry_after=4, path=r"^/api/v4/projects/1/")
    async with sync_deps(settings, sessionmaker) as deps:
        with recorded_waits() as waits:
            result = await sync_user(deps, user_id, "run-1")
    assert waits == [4.0]
    assert (result.status, result.reason, result.attempts) == ("failed", "projects_failed", 2)
    (failure,) = result.failed_projects
    assert (failure.gitlab_project_id, failure.error, failure.status) == (
        "1",
        "GitLabRateLimited",
        429,
    )
    assert failure.retry_after == 4.0


async def test_lease_is_released_when_the_user_fails(db_url, sessionmaker, sim, user_id):
    settings = settings_for(db_url, sim, user_sync_attempts=1)
    sim.world.add_fault(
        kind="status", status=403, forbidden_reason="forbidden", path=r"^/api/v4/projects/1/"
    )
    async with sync_deps(settings, sessionmaker) as deps:
        result = await sync_user(deps, user_id, "run-1")
        # The next run may take the user at once.
        async with deps.sessionmaker() as s, s.begin():
            assert await UserLease(deps, user_id, "run-2").acquire(s)
    assert (result.status, result.reason) == ("failed", "projects_failed")
    assert query(db_url, "SELECT holder FROM sync_lease") == [("run-2",)]


async def test_lease_lost_mid_sync_fails_the_user_without_last_sync(
    db_url, sessionmaker, sim, user_id
):
    settings = settings_for(db_url, sim, lease_ttl_seconds=1)  # a beat every third of a second
    sim.world.configure(latency_ms=1000)  # every sync needs several sequential seconds
    async with sync_deps(settings, sessionmaker) as deps:
        task = asyncio.create_task(sync_user(deps, user_id, "run-1"))
        async with asyncio.timeout(30):
            while lease_holders(db_url) != [(user_id, "run-1")]:
                await asyncio.sleep(0.01)
            async with deps.sessionmaker() as s, s.begin():
                await s.execute(
                    sa.update(SyncLease)
                    .where(SyncLease.user_id == user_id)
                    .values(holder="other-run", expires_at=utcnow() + timedelta(minutes=5))
                )
            result = await task
    assert (result.status, result.reason) == ("failed", "lease_lost")
    assert last_syncs(db_url) == []
    assert lease_holders(db_url) == [(user_id, "other-run")]  # the new holder keeps it


async def test_user_deadline_fails_the_user_and_releases_the_lease(
    db_url, sessionmaker, sim, user_id
):
    settings = settings_for(db_url, sim, user_sync_deadline_seconds=0.2)
    sim.world.configure(latency_ms=2000)
    async with sync_deps(settings, sessionmaker) as deps:
        result = await sync_user(deps, user_id, "run-1")
    assert (result.status, result.reason) == ("failed", "deadline_exceeded")
    assert last_syncs(db_url) == [] and lease_holders(db_url) == []


async def test_events_stored_by_a_failed_attempt_still_count(
    db_url, engine, sessionmaker, sim, user_id
):
    """Project 2 stores every page, then its cursor update fails once (a transient database
    error); the retry re-reads the same items and inserts nothing new. Every event in the
    table was inserted by this one sync, so `stored` must count all of them."""
    failures: list[str] = []

    def fail_first_cursor_write_of_project_2(conn, cursor, statement, params, context, many):
        moving_cursor = (
            statement.lstrip().upper().startswith("INSERT") and "sync_cursor" in statement
        )
        if moving_cursor and not failures and "'2'" in repr(params):
            failures.append(statement)
            raise OSError("simulated: connection reset while moving the cursor")

    settings = settings_for(db_url, sim, user_sync_attempts=2)
    async with sync_deps(settings, sessionmaker) as deps:
        sa.event.listen(
            engine.sync_engine, "before_cursor_execute", fail_first_cursor_write_of_project_2
        )
        with recorded_waits():
            result = await sync_user(deps, user_id, "run-1")
    assert failures  # the fault fired
    assert (result.status, result.attempts) == ("processed", 2)
    (events,) = query(db_url, 'SELECT count(*) FROM "Event"')
    assert result.stored == events[0]


async def test_a_sync_with_nothing_new_writes_every_cursor_in_one_statement(
    db_url, engine, sessionmaker, sim, user_id
):
    """The steady state: no transaction per idle project; their cursors move together with
    LastSync, and still never backwards."""
    async with sync_deps(settings_for(db_url, sim), sessionmaker) as deps:
        assert (await sync_user(deps, user_id, "run-1")).status == "processed"
        before = dict(query(db_url, "SELECT gitlab_project_id, cursor_at FROM sync_cursor"))
        statements: list[str] = []

        @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
        def record(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)

        result = await sync_user(deps, user_id, "run-2")
    assert (result.status, result.stored, result.updated) == ("processed", 0, 0)
    assert sum("INSERT INTO sync_cursor" in s for s in statements) == 1
    after = dict(query(db_url, "SELECT gitlab_project_id, cursor_at FROM sync_cursor"))
    assert set(after) == {str(p) for p in PIDS} == set(before)
    assert all(after[p] > before[p] for p in after)
