"""Seeded chaos: 100 users, 20% of GitLab responses faulty (every kind, mid-pagination too),
GitLab data changing during the run. While the run goes on, a sampler checks that no cursor
and no LastSync ever stands past data that is not stored; after the faults stop, one more
poll makes the "Event" table equal the simulator's ground truth exactly.

The same run on the newest app's schema (30 users; threads read whole for every changed
item, so every fault also lands on the Discussions API): there the ground truth also has the
work-item columns, each comment's link to its item and the people."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World
from tests.conftest import drop_pg_database
from tests.reliability.helpers import ServiceProcess, add_chaos, check_all_horizons
from tests.support import (
    add_user,
    assert_equal_truth,
    assert_work_items,
    newest_pg_database,
    project_tuple,
    query,
)

SEED = 20240607
USERS = 100
NEWEST_USERS = 30


def _choose_projects(world: World, rng: random.Random, users: int) -> dict[str, list[int]]:
    """Each user monitors up to three projects it can see (seeded)."""
    chosen = {}
    for i in range(1, users + 1):
        name = f"user{i}"
        user = world.user(name)
        visible = [p.id for p in world.projects.values() if world.can_see_project(p, user)]
        chosen[name] = sorted(rng.sample(visible, min(3, len(visible))))
    return chosen


def _mutate(world: World, rng: random.Random, stop: threading.Event, limit: int) -> int:
    """Edit items and add comments while the run goes on (bounded count and time)."""
    done = 0
    pids = sorted(world.projects)
    while done < limit and not stop.wait(0.05):
        pid = rng.choice(pids)
        kind = rng.choice(["issue", "merge_request"])
        iids = sorted(world.project(pid).index(kind).by_iid)
        iid = rng.choice(iids)
        action = rng.random()
        if action < 0.4:
            world.update_item(pid, kind, iid, title=f"edited #{done} ✓", system_notes=False)
        elif action < 0.6:
            world.update_item(pid, kind, iid, labels=["chaos", f"round, {done}"])
        else:
            world.add_note(pid, kind, iid, f"comment {done} during the chaos run\nsecond line")
        done += 1
    return done


@pytest.fixture(params=["story", "newest"])
def chaos_db(request, pg_url) -> Iterator[tuple[str, bool, int]]:
    """(database URL, newest schema?, users): the story schema this service creates, or a
    database built from the newest app's own schema."""
    if request.param == "story":
        yield pg_url, False, USERS
        return
    url = newest_pg_database()
    try:
        yield url, True, NEWEST_USERS
    finally:
        drop_pg_database(url)


@pytest.mark.slow
def test_chaos_run_loses_nothing_and_cursors_never_pass_unstored_data(chaos_db, tmp_path):
    pg_url, newest, user_count = chaos_db
    rng = random.Random(SEED)
    sim = SimulatorServer(
        seed=SEED, users=user_count, projects=8, issues=10, merge_requests=4, notes=2, days=20
    )
    with sim:
        world = sim.world
        monitored = _choose_projects(world, rng, user_count)
        users: dict[str, tuple[str, list[int]]] = {}
        for name, pids in monitored.items():
            uid = add_user(
                pg_url,
                f"{name}@example.com",
                sim.token(name),
                [project_tuple(sim, p) for p in pids],
            )
            users[uid] = (name, pids)

        service = ServiceProcess(
            pg_url,
            sim.url,
            tmp_path,
            poll_concurrency=10,
            gitlab_per_page=4,  # every issue listing spans several pages
            gitlab_read_timeout=1,
            gitlab_max_attempts=3,
            user_sync_attempts=2,
            gitlab_down_threshold=1000,  # keep going: this run is about partial failures
            lease_ttl_seconds=30,
        )
        add_chaos(world, rate=0.20, seed=SEED, slow_delay=1.5)
        with service:
            outcome: dict = {}
            poller = threading.Thread(
                target=lambda: outcome.update(r=service.poll(timeout=400)), daemon=True
            )
            stop = threading.Event()
            mutated: list[int] = []
            mutator = threading.Thread(
                target=lambda: mutated.append(_mutate(world, random.Random(SEED + 1), stop, 150)),
                daemon=True,
            )
            poller.start()
            mutator.start()

            # --- during the run: sample cursors and LastSync, check nothing below is missing
            sample_rng = random.Random(SEED + 2)
            violations: list[str] = []
            checked = samples = 0
            deadline = time.monotonic() + 400
            while poller.is_alive() and time.monotonic() < deadline and samples < 300:
                found, n = check_all_horizons(
                    pg_url, sim, users, sample=6, rng=sample_rng, newest=newest
                )
                violations += found
                checked += n
                samples += 1
            poller.join(timeout=max(deadline - time.monotonic(), 1))
            stop.set()
            mutator.join(timeout=10)
            assert not poller.is_alive(), "the chaos run did not finish in time"
            assert not violations, violations[:10]
            assert checked > 20, f"the sampler checked too little during the run ({checked})"

            r = outcome["r"]
            assert r.status_code == 200, r.text
            summary = r.json()
            assert summary["total"] == user_count
            # After the run, every cursor and LastSync at once (no sampling).
            found, n = check_all_horizons(pg_url, sim, users, newest=newest)
            assert not found, found[:10]
            assert n > 0

            # The chaos was what we asked for: every kind, ~20%, on later pages too.
            log = world.requests()
            api = [e for e in log if e["path"].startswith("/api/v4/projects/")]
            faulty = [e for e in api if e["fault"]]
            kinds = Counter(e["fault"] for e in faulty)
            assert set(kinds) == {"status", "rate_limit", "slow", "drop", "malformed", "truncated"}
            assert 0.12 < len(faulty) / len(api) < 0.30, (len(faulty), len(api))
            assert any(int(e["query"].get("page", "1")) >= 2 for e in faulty)

            # --- faults stop; more changes; one more poll restores exact equality
            world.clear_faults()
            for pid in sorted(world.projects)[:3]:
                it = world.create_issue(pid, "after the storm", labels=["a, b", "ü"])
                world.add_note(pid, "issue", it.iid, "fresh comment")
            r = service.poll(timeout=300)
            assert r.status_code == 200, r.text
            final = r.json()
            assert final["failed"] == 0, [u for u in final["users"] if u["status"] == "failed"]
            for uid, (name, pids) in users.items():
                assert_equal_truth(pg_url, uid, sim, name, pids, newest=newest)
                if newest:
                    assert_work_items(pg_url, uid, sim, name, pids)
            assert query(pg_url, "SELECT count(*) FROM sync_lease") == [(0,)]
            dupes = query(
                pg_url,
                'SELECT "userId", "gitlabEventId" FROM "Event" GROUP BY 1, 2 HAVING count(*) > 1',
            )
            assert dupes == []
            assert mutated and mutated[0] > 0
