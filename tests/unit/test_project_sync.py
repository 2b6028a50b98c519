"""app.sync.project_sync: where a fetch starts, and one project synced against the simulator
(SQLite and PostgreSQL), compared with the simulator's oracle (gitlab_sim.expected)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from app.db import repository as repo
from app.db.models import MonitoredProject, SyncCursor, utcnow
from app.gitlab.client import GitLabClient, format_gitlab_time
from app.gitlab.errors import GitLabForbidden, GitLabUnavailable
from app.gitlab.transport import create_http_client
from app.settings import Settings
from app.sync.deps import SyncDeps
from app.sync.project_sync import fetch_since, sync_project
from gitlab_sim.expected import expected_events
from gitlab_sim.server import SimulatorServer
from tests.support import add_user, assert_equal_truth, make_settings, project_tuple

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OVERLAP = timedelta(seconds=120)
PID = 1

# --- fetch_since ----------------------------------------------------------------------------


def settings(backfill_days: int = 30) -> Settings:
    return make_settings(
        "sqlite+aiosqlite:///unused.db", sync_overlap_seconds=120, sync_backfill_days=backfill_days
    )


def project(created: datetime) -> MonitoredProject:
    return MonitoredProject(
        gitlabProjectId="1", projectName="p", projectPath="g/p", createdAt=created
    )


def cursor(at: datetime | None) -> SyncCursor:
    return SyncCursor(user_id="u", gitlab_project_id="1", cursor_at=at, updated_at=NOW)


def test_cursor_wins_minus_the_overlap():
    at = NOW - timedelta(hours=3)
    old_project = project(NOW - timedelta(days=400))
    last_sync = NOW - timedelta(days=2)
    assert fetch_since(settings(), old_project, cursor(at), last_sync, NOW) == at - OVERLAP
    assert fetch_since(settings(0), old_project, cursor(at), None, NOW) == at - OVERLAP


def test_adopted_last_sync_covers_projects_that_existed_then():
    last_sync = NOW - timedelta(days=2)
    before = project(last_sync - timedelta(days=10))
    assert fetch_since(settings(), before, None, last_sync, NOW) == last_sync - OVERLAP
    exactly = project(last_sync)
    assert fetch_since(settings(), exactly, None, last_sync, NOW) == last_sync - OVERLAP


def test_project_added_after_last_sync_is_backfilled():
    last_sync = NOW - timedelta(days=2)
    added_later = project(last_sync + timedelta(seconds=1))
    assert fetch_since(settings(30), added_later, None, last_sync, NOW) == NOW - timedelta(days=30)
    assert fetch_since(settings(0), added_later, None, last_sync, NOW) is None


def test_cursor_row_without_a_cursor_falls_back_to_last_sync_or_backfill():
    """A project that only ever failed has a sync_cursor row with cursor_at NULL."""
    last_sync = NOW - timedelta(days=2)
    old = project(NOW - timedelta(days=100))
    assert fetch_since(settings(), old, cursor(None), last_sync, NOW) == last_sync - OVERLAP
    assert fetch_since(settings(7), old, cursor(None), None, NOW) == NOW - timedelta(days=7)


@pytest.mark.parametrize(
    ("days", "expected"), [(90, NOW - timedelta(days=90)), (1, NOW - timedelta(days=1)), (0, None)]
)
def test_backfill_days_without_cursor_or_last_sync(days, expected):
    assert fetch_since(settings(days), project(NOW), None, None, NOW) == expected


# --- sync_project against the simulator ---------------------------------------------------


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(seed=21, users=2, projects=2, issues=12, merge_requests=6, notes=2) as s:
        yield s


@asynccontextmanager
async def sync_deps(settings: Settings, sessionmaker) -> AsyncIterator[SyncDeps]:
    http = create_http_client(settings)
    try:
        yield SyncDeps(settings=settings, sessionmaker=sessionmaker, http=http)
    finally:
        await http.aclose()


async def state(deps: SyncDeps, user_id: str) -> tuple[MonitoredProject, SyncCursor | None]:
    async with deps.sessionmaker() as s:
        (monitored,) = await repo.list_projects(s, user_id)
        return monitored, (await repo.get_cursors(s, user_id)).get(str(PID))


async def run_sync(deps: SyncDeps, user_id: str, sim: SimulatorServer, last_sync=None):
    monitored, current = await state(deps, user_id)
    client = GitLabClient(deps.http, deps.settings, sim.token("user1"))
    return await sync_project(deps, user_id, client, monitored, current, last_sync)


def project_requests(sim: SimulatorServer) -> list[dict]:
    return [r for r in sim.world.requests() if r["path"].startswith(f"/api/v4/projects/{PID}/")]


def listing_queries(sim: SimulatorServer) -> list[dict]:
    lists = (f"/api/v4/projects/{PID}/issues", f"/api/v4/projects/{PID}/merge_requests")
    return [r["query"] for r in sim.world.requests() if r["path"] in lists]


def floor_ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


async def test_sync_stores_exactly_the_oracles_events_and_moves_the_cursor_to_the_fetch_start(
    db_url, sessionmaker, sim
):
    uid = add_user(db_url, "p@example.com", sim.token("user1"), [project_tuple(sim, PID)])
    want = expected_events(sim.world, "user1", PID)
    assert len(want) > 20  # issues, MRs and comments: a real listing, not an empty one
    async with sync_deps(make_settings(db_url, sim.url), sessionmaker) as deps:
        started = floor_ms(utcnow())
        outcome = await run_sync(deps, uid, sim)
        _, stored_cursor = await state(deps, uid)
    assert outcome.error is None
    assert (outcome.stored, outcome.updated) == (len(want), 0)
    assert_equal_truth(db_url, uid, sim, "user1", [PID])
    # Backfill 0 = everything: no updated_after on the listings.
    assert listing_queries(sim) and all("updated_after" not in q for q in listing_queries(sim))
    # The cursor is when the fetch started: not after any request of it was answered.
    assert stored_cursor is not None and stored_cursor.cursor_at is not None
    first_answer = min(r["time"] for r in project_requests(sim))
    assert started <= stored_cursor.cursor_at
    assert stored_cursor.cursor_at.timestamp() <= first_answer
    assert stored_cursor.last_error is None


async def test_next_sync_starts_at_the_cursor_and_stores_only_changes(db_url, sessionmaker, sim):
    uid = add_user(db_url, "p@example.com", sim.token("user1"), [project_tuple(sim, PID)])
    async with sync_deps(make_settings(db_url, sim.url), sessionmaker) as deps:
        assert (await run_sync(deps, uid, sim)).error is None
        _, first_cursor = await state(deps, uid)
        assert first_cursor is not None and first_cursor.cursor_at is not None
        issue = next(iter(sim.world.project(PID).issues.by_iid.values()))
        sim.world.update_issue(PID, issue.iid, title="renamed between runs")
        sim.world.add_note(PID, "issue", issue.iid, "a new comment between runs")
        sim.world.clear_requests()
        outcome = await run_sync(deps, uid, sim)
        _, second_cursor = await state(deps, uid)
    assert outcome.error is None
    assert (outcome.stored, outcome.updated) == (1, 1)  # the comment; the renamed issue
    assert_equal_truth(db_url, uid, sim, "user1", [PID])
    since = format_gitlab_time(first_cursor.cursor_at - OVERLAP)
    assert {q.get("updated_after") for q in listing_queries(sim)} == {since}
    assert second_cursor is not None and second_cursor.cursor_at is not None
    assert second_cursor.cursor_at > first_cursor.cursor_at


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        (rf"/projects/{PID}/issues$", 403, GitLabForbidden),
        (rf"/projects/{PID}/merge_requests$", 502, GitLabUnavailable),
        (rf"/projects/{PID}/issues/\d+/notes$", 502, GitLabUnavailable),
    ],
)
async def test_gitlab_error_keeps_the_cursor_and_reports_the_first_real_error(
    db_url, sessionmaker, sim, path, status, error
):
    uid = add_user(db_url, "p@example.com", sim.token("user1"), [project_tuple(sim, PID)])
    async with sync_deps(make_settings(db_url, sim.url), sessionmaker) as deps:
        # First sync ever: fails, and no cursor appears.
        fault = sim.world.add_fault(kind="status", status=status, path=path)
        failed = await run_sync(deps, uid, sim)
        assert fault.hits > 0
        _, none_yet = await state(deps, uid)
        assert none_yet is None or none_yet.cursor_at is None
        # A later sync fails: the cursor stays where the last good sync put it.
        sim.world.clear_faults()
        assert (await run_sync(deps, uid, sim)).error is None
        _, good = await state(deps, uid)
        sim.world.update_issue(PID, 1, title="changed, so notes and listings are fetched")
        sim.world.add_note(PID, "issue", 1, "so that the notes endpoint is asked again")
        fault = sim.world.add_fault(kind="status", status=status, path=path)
        failed_again = await run_sync(deps, uid, sim)
        assert fault.hits > 0
        _, kept = await state(deps, uid)
    for outcome in (failed, failed_again):
        assert isinstance(outcome.error, error), repr(outcome.error)
        assert not isinstance(outcome.error, BaseExceptionGroup)
        assert outcome.error.status == status
    assert good is not None and kept is not None
    assert kept.cursor_at == good.cursor_at
