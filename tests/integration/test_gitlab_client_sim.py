"""GitLabClient over real HTTP against the GitLab simulator on 127.0.0.1.

Retries and rate-limit waits are configured to sleep zero: the simulator's faults are what
the client must get through, not its timers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import httpx
import pytest

from app.gitlab.client import GitLabClient
from app.settings import Settings, load_settings
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World

BIG_ISSUES = 25_000
BIG_PROJECT = "big-group/monorepo"


def make_settings(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "gitlab_instance_url": url,
        "gitlab_backoff_base": 0,
        "gitlab_backoff_max": 0,
        "gitlab_rate_limit_max_wait": 0,
        "gitlab_max_attempts": 4,
        "gitlab_per_page": 100,
    }
    values.update(overrides)
    return load_settings(**values)


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


@pytest.fixture(scope="module")
def big_sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(
        seed=11,
        users=2,
        projects=1,
        issues=3,
        merge_requests=2,
        big_project_issues=BIG_ISSUES,
        big_project_notes=0,
    ) as sim:
        yield sim


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(seed=5, users=3, projects=3, issues=40, merge_requests=25, notes=6) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def all_ids(pages: AsyncIterator[list]) -> list[int]:
    return [item.id async for page in pages for item in page]


def clear(world: World) -> None:
    world.clear_requests()
    world.clear_faults()


@pytest.mark.slow
async def test_25000_issues_without_totals_arrive_complete_and_once(big_sim, http):
    world = big_sim.world
    clear(world)
    project = world.project(BIG_PROJECT)
    expected = {it.id for it in project.index("issue").by_iid.values()}
    assert len(expected) == BIG_ISSUES
    token = big_sim.token("user1")
    probe = await http.get(
        f"{big_sim.api_url}/projects/{project.id}/issues", headers={"PRIVATE-TOKEN": token}
    )
    assert "x-total" not in probe.headers and "x-total-pages" not in probe.headers
    clear(world)
    client = GitLabClient(http, make_settings(big_sim.url), token)

    ids = await all_ids(client.issues(BIG_PROJECT, None))

    assert len(ids) == BIG_ISSUES
    assert set(ids) == expected
    log = [e for e in world.requests() if e["kind"] == "issues"]
    assert len(log) == BIG_ISSUES // 100
    assert all(e["status"] == 200 for e in log)


@pytest.mark.slow
async def test_offset_cap_switches_to_keyset_with_each_issue_once(big_sim, http):
    world = big_sim.world
    clear(world)
    world.configure(offset_cap=5_000)
    try:
        client = GitLabClient(http, make_settings(big_sim.url), big_sim.token("user1"))
        ids = await all_ids(client.issues(BIG_PROJECT, None))
    finally:
        world.configure(offset_cap=50_000)

    assert len(ids) == BIG_ISSUES and len(set(ids)) == BIG_ISSUES
    log = [e for e in world.requests() if e["kind"] == "issues"]
    assert any(e["status"] == 405 for e in log)
    assert any(e["query"].get("pagination") == "keyset" for e in log)


@pytest.mark.slow
async def test_a_429_and_three_503s_in_a_row_lose_nothing(big_sim, http):
    world = big_sim.world
    clear(world)
    # Mid-listing: page 7 is refused once with 429, then three times with 503.
    world.add_fault(kind="rate_limit", path="/issues$", min_page=7, count=1, retry_after=1)
    world.add_fault(kind="status", status=503, path="/issues$", min_page=7, count=3)
    try:
        client = GitLabClient(http, make_settings(big_sim.url), big_sim.token("user1"))
        ids = await all_ids(client.issues(BIG_PROJECT, None))
    finally:
        world.clear_faults()

    assert len(ids) == BIG_ISSUES and len(set(ids)) == BIG_ISSUES
    statuses = [e["status"] for e in world.requests() if e["kind"] == "issues"]
    assert statuses.count(429) == 1 and statuses.count(503) == 3
    assert statuses.count(200) == BIG_ISSUES // 100


@pytest.mark.slow
async def test_truncated_and_dropped_bodies_are_retried(big_sim, http):
    world = big_sim.world
    clear(world)
    faults = [
        world.add_fault(kind="truncated", path="/issues$", min_page=3, count=1),
        world.add_fault(kind="drop", path="/issues$", min_page=5, count=1),
        world.add_fault(kind="malformed", path="/issues$", min_page=9, count=1),
    ]
    try:
        client = GitLabClient(http, make_settings(big_sim.url), big_sim.token("user1"))
        ids = await all_ids(client.issues(BIG_PROJECT, None))
    finally:
        world.clear_faults()

    assert [f.hits for f in faults] == [1, 1, 1]
    assert len(ids) == BIG_ISSUES and len(set(ids)) == BIG_ISSUES


async def test_comments_of_closed_and_merged_merge_requests_arrive(sim, http):
    world = sim.world
    clear(world)
    user = world.user("user1")
    project = next(p for p in world.projects.values() if user.id in p.members)
    closed = world.create_merge_request(project.id, "Closed one", state="closed", author="user1")
    merged = world.create_merge_request(project.id, "Merged one", state="merged", author="user1")
    for mr in (closed, merged):
        for n in range(3):
            world.add_note(project.id, "merge_request", mr.iid, f"comment {n} on !{mr.iid}")
        world.add_note(project.id, "merge_request", mr.iid, "closed", system=True)
    client = GitLabClient(http, make_settings(sim.url), sim.token("user1"))

    mrs = [mr async for page in client.merge_requests(project.id, None) for mr in page]
    by_iid = {mr.iid: mr for mr in mrs}
    assert by_iid[closed.iid].state == "closed" and by_iid[merged.iid].state == "merged"
    assert {"closed", "merged"} <= {mr.state for mr in mrs}

    for mr in (by_iid[closed.iid], by_iid[merged.iid]):
        notes = [
            n
            async for page in client.notes(
                project.id, "MergeRequest", mr.iid, None, noteable_web_url=mr.web_url
            )
            for n in page
        ]
        assert sorted(n.body for n in notes) == [f"comment {k} on !{mr.iid}" for k in range(3)]
        for n in notes:
            assert n.web_url == f"{mr.web_url}#note_{n.id}"
            assert (n.project_id, n.noteable_type, n.noteable_iid) == (
                project.id,
                "MergeRequest",
                mr.iid,
            )


async def test_incremental_listing_makes_the_minimum_requests(sim, http):
    world = sim.world
    user = world.user("user1")
    project = next(p for p in world.projects.values() if user.id in p.members)
    client = GitLabClient(http, make_settings(sim.url), sim.token("user1"))

    # ThrottledTouch: move past the last minute so a new note touches its issue.
    world.advance_clock(120)
    since = ms_to_dt(world.now_ms())
    world.advance_clock(1)
    issues = sorted(project.index("issue").by_iid.values(), key=lambda i: i.iid)
    world.update_issue(project.id, issues[0].iid, title="renamed", system_notes=False)
    world.update_issue(project.id, issues[1].iid, labels=["bug"])  # leaves a system note
    new_note = world.add_note(project.id, "issue", issues[2].iid, "a fresh comment")
    clear(world)

    changed = [it async for page in client.issues(project.id, since) for it in page]
    mrs = [mr async for page in client.merge_requests(project.id, since) for mr in page]
    fresh_notes = []
    for it in changed:
        if it.user_notes_count > 0:
            async for page in client.notes(
                project.id, "Issue", it.iid, since, noteable_web_url=it.web_url
            ):
                fresh_notes.extend(page)

    assert sorted(it.iid for it in changed) == sorted(i.iid for i in issues[:3])
    assert mrs == []
    assert [n.id for n in fresh_notes] == [new_note.id]  # the label change is a system note
    with_notes = sum(1 for it in changed if it.user_notes_count > 0)
    assert with_notes >= 1
    counts = world.request_counts()
    # One page per listing, one page of notes per changed item that has comments.
    assert counts.get("issues") == 1
    assert counts.get("merge_requests") == 1
    assert counts.get("issue_notes", 0) == with_notes
    assert sum(counts.values()) == 2 + with_notes
