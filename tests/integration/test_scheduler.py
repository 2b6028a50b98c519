"""The built-in scheduler.

First the loop itself against httpx.MockTransport, with an injected clock and wait between
fires (exact fire times, signatures, overlap) and retry waits recorded by
`app.retry.recorded_waits()` instead of slept, then the real thing: uvicorn on 127.0.0.1,
the GitLab simulator, real databases, a seconds-level cron (cron's own granularity is a
minute), runs read back from the poll_run table.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from email.utils import formatdate

import httpx
import pytest
from typer.testing import CliRunner

from app import retry
from app.scheduler.config import SchedulerJob, load, locate
from app.scheduler.runner import (
    CronSchedule,
    IntervalSchedule,
    PollScheduler,
    RunnerOptions,
    SchedulerStartError,
    SchedulingServer,
    build_scheduler,
    build_server,
)
from app.security.signing import verify_inngest_signature
from app.settings import load_settings
from gitlab_sim.server import SimulatorServer
from tests.support import SIGNING_KEY, add_user, free_port, make_settings, project_tuple, query

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z: not on a 10-minute boundary
URL = "http://127.0.0.1:9/api/poll"


def shipped_job() -> SchedulerJob:
    return load(locate())


class FakeTime:
    def __init__(self, t: float = T0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        # Runs already started go first, at the current time, as they would in a real wait.
        for _ in range(50):
            await asyncio.sleep(0)
        self.t += seconds


def make_scheduler(handler, fake: FakeTime, **kw) -> PollScheduler:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    kw.setdefault("schedule", CronSchedule("*/10 * * * *"))
    return PollScheduler(
        job=kw.pop("job", shipped_job()),
        url=URL,
        signing_key=SIGNING_KEY,
        client=client,
        clock=fake.clock,
        sleep=fake.sleep,
        **kw,
    )


def ok_summary(**extra) -> dict:
    return {"success": True, "processed": 1, "failed": 0, "skipped": 0, "total": 1, **extra}


# --- the loop, with fake time ------------------------------------------------------------------


async def test_fires_on_the_cron_with_a_valid_signature():
    fake = FakeTime()
    seen: list[tuple[float, httpx.Request]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((fake.t, request))
        return httpx.Response(200, json=ok_summary(events={"stored": 3}))

    sched = make_scheduler(handler, fake)
    task = asyncio.create_task(sched.run())
    while len(seen) < 3:
        await asyncio.sleep(0)
    task.cancel()
    await sched.stop()

    first = (T0 // 600 + 1) * 600
    assert [t for t, _ in seen] == [first, first + 600, first + 1200]
    for t, req in seen:
        assert req.method == "POST" and str(req.url) == URL
        assert req.content == b"{}"
        assert req.headers["x-gitlab-insights-trigger"] == "scheduler"
        # Exactly what /api/poll verifies, at the moment it was sent.
        verify_inngest_signature(
            req.headers["x-inngest-signature"], req.content, [SIGNING_KEY], now=t, max_age=300
        )
    assert sched.fired == 3 and sched.skipped == 0
    assert all(r.ok and r.attempts == 1 for r in sched.results)


async def test_fire_at_start_then_on_schedule():
    fake = FakeTime()
    times: list[float] = []

    def handler(request):
        times.append(fake.t)
        return httpx.Response(200, json=ok_summary())

    sched = make_scheduler(handler, fake, schedule=IntervalSchedule(60))
    task = asyncio.create_task(sched.run(fire_at_start=True))
    while len(times) < 2:
        await asyncio.sleep(0)
    task.cancel()
    await sched.stop()
    assert times == [T0, (T0 // 60 + 1) * 60]


async def test_503_is_retried_with_the_exponential_policy():
    fake = FakeTime()
    calls = []

    def handler(request):
        calls.append(fake.t)
        return httpx.Response(503, json={"success": False, "error": "gitlab unavailable"})

    sched = make_scheduler(handler, fake)
    with retry.recorded_waits() as waits:
        result = await sched.fire_once()
    assert result is not None and not result.ok
    assert result.attempts == 4  # 1 + --max-retry-attempts 3
    assert result.status_code == 503 and "gitlab unavailable" in result.error
    assert waits == [30, 60, 120]  # --min-backoff 30s, doubling, --max-backoff 120s
    assert fake.sleeps == []  # retries never wait through the cron's sleep


async def test_retry_after_is_honoured_up_to_max_backoff():
    fake = FakeTime()
    answers = [
        # An HTTP date is read against the scheduler's clock: 100 s from now.
        httpx.Response(503, headers={"Retry-After": formatdate(T0 + 100, usegmt=True)}),
        httpx.Response(502, headers={"Retry-After": "9999"}),
        httpx.Response(503, headers={"Retry-After": "1"}),
        httpx.Response(200, json=ok_summary()),
    ]
    sched = make_scheduler(lambda r: answers.pop(0), fake)
    with retry.recorded_waits() as waits:
        result = await sched.fire_once()
    assert result.ok and result.attempts == 4
    # max(30, 100); min(9999, --max-backoff 120); a short Retry-After never shortens 120.
    assert waits == [100, 120, 120]


async def test_timeouts_and_connection_errors_are_retried_4xx_is_not():
    fake = FakeTime()
    answers: list = [httpx.ReadTimeout("slow"), httpx.ConnectError("down")]

    def handler(request):
        a = answers.pop(0) if answers else httpx.Response(200, json=ok_summary())
        if isinstance(a, Exception):
            raise a
        return a

    sched = make_scheduler(handler, fake)
    with retry.recorded_waits() as waits:
        result = await sched.fire_once()
    assert result.ok and result.attempts == 3
    assert waits == [30, 60]

    refused = make_scheduler(
        lambda r: httpx.Response(
            401, json={"error": "unauthorized"}, headers={"x-inngest-no-retry": "true"}
        ),
        FakeTime(),
    )
    with retry.recorded_waits() as waits:
        result = await refused.fire_once()
    assert not result.ok and result.attempts == 1 and result.status_code == 401
    assert waits == []


async def test_a_tick_during_a_run_is_skipped_not_overlapped():
    fake = FakeTime()
    release = asyncio.Event()
    active = 0
    most = 0

    async def handler(request):
        nonlocal active, most
        active += 1
        most = max(most, active)
        await release.wait()
        active -= 1
        return httpx.Response(200, json=ok_summary())

    sched = make_scheduler(handler, fake)
    first = sched.tick()
    assert first is not None and sched.busy
    assert sched.tick() is None  # before the first run even started
    for _ in range(20):
        await asyncio.sleep(0)
    assert sched.tick() is None
    assert await sched.fire_once() is None
    release.set()
    result = await first
    assert result.ok and most == 1
    assert sched.skipped == 3 and sched.fired == 1
    assert not sched.busy and sched.tick() is not None
    await sched.stop()


def test_refuses_to_start_without_a_signing_key(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    unsigned = load_settings(database_url=db, inngest_signing_key=None)
    with pytest.raises(SchedulerStartError, match="INNGEST_SIGNING_KEY"):
        build_scheduler(unsigned)
    with pytest.raises(SchedulerStartError, match="ALLOW_UNSIGNED_POLLS"):
        build_server(unsigned, port=free_port())
    allowed = load_settings(database_url=db, inngest_signing_key=None, allow_unsigned_polls=True)
    assert build_scheduler(allowed) is not None


def test_serve_scheduler_command_refuses_without_key(tmp_path, monkeypatch):
    from app.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/x.db")
    monkeypatch.delenv("INNGEST_SIGNING_KEY", raising=False)
    monkeypatch.delenv("ALLOW_UNSIGNED_POLLS", raising=False)
    r = CliRunner().invoke(cli, ["serve", "--scheduler", "--port", str(free_port())])
    assert r.exit_code == 2
    # (`serve` migrates before it starts the scheduler: migration log lines may precede.)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "INNGEST_SIGNING_KEY" in errors[0], r.output
    assert "Traceback" not in r.output


def test_a_broken_scheduler_file_stops_start_up(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text('--schedule: "0 * * * *"\n--uri: "http://h/api/poll"\n')
    settings = load_settings(database_url="sqlite:///x.db", inngest_signing_key=SIGNING_KEY)
    with pytest.raises(SchedulerStartError, match="60-minute gap"):
        build_scheduler(settings, scheduler_file=bad)


# --- the real server ---------------------------------------------------------------------------

EVERY_SECOND = "* * * * * *"  # croniter's 6th field: seconds


class Running:
    """A SchedulingServer in a thread (uvicorn skips signal handling off the main thread)."""

    def __init__(self, server: SchedulingServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.run, daemon=True)

    def __enter__(self) -> SchedulingServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the server did not stop"


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def runs(db_url: str) -> list[tuple]:
    return query(
        db_url,
        "SELECT trigger, status_code, success, events_stored, started_at, finished_at "
        "FROM poll_run ORDER BY started_at",
    )


def finished_runs(db_url: str) -> list[tuple]:
    return [r for r in runs(db_url) if r[5] is not None]


@pytest.fixture
def sim():
    with SimulatorServer(seed=5, users=2, projects=2, issues=6, merge_requests=3, notes=2) as s:
        yield s


def test_fires_on_a_fast_cron_and_the_runs_are_recorded(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
    settings = make_settings(db_url, sim.url)
    server = build_server(
        settings,
        port=free_port(),
        options=RunnerOptions(cron=EVERY_SECOND, graceful_shutdown_seconds=2),
    )
    with Running(server):
        wait_for(lambda: len(finished_runs(db_url)) >= 2, what="two scheduled runs")
        assert server.scheduler.url.startswith("http://127.0.0.1:")
    rows = finished_runs(db_url)
    assert {r[0] for r in rows} == {"scheduler"}  # recorded as the built-in scheduler's
    assert all(r[1] == 200 and r[2] for r in rows)
    assert rows[0][3] > 0, "the first run stores the simulator's events"
    assert all(r.ok for r in server.scheduler.results)
    # Stopped with the server: no loop, no run left behind.
    assert not server.scheduler.running and not server.scheduler.busy


def test_a_run_that_outlasts_the_interval_is_not_overlapped(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
    # Every issue page takes 1.2 s: each run outlasts the 1-second schedule.
    sim.world.add_fault(kind="slow", path=r"/issues$", delay=1.2)
    settings = make_settings(db_url, sim.url)
    server = build_server(
        settings,
        port=free_port(),
        options=RunnerOptions(cron=EVERY_SECOND, graceful_shutdown_seconds=3),
    )
    with Running(server):
        wait_for(lambda: len(finished_runs(db_url)) >= 2, what="two slow runs")
    rows = finished_runs(db_url)
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert later[4] >= earlier[5], "a run started before the previous one finished"
    assert server.scheduler.skipped >= 1


def test_a_503_is_retried(db_url, sim):
    add_user(db_url, "u1@example.com", sim.token("user1"), [project_tuple(sim, 1)])
    # GitLab answers 503 once: with one attempt per request and per user and a threshold of
    # one user, /api/poll itself answers 503 ("GitLab down") with Retry-After: 1.
    sim.world.add_fault(kind="status", status=503, path=r"/issues$", count=1)
    settings = make_settings(
        db_url,
        sim.url,
        gitlab_max_attempts=1,
        user_sync_attempts=1,
        gitlab_down_threshold=1,
        gitlab_down_retry_after_seconds=1,
    )
    server = build_server(
        settings,
        port=free_port(),
        options=RunnerOptions(
            interval_seconds=3600, fire_at_start=True, graceful_shutdown_seconds=2
        ),
    )
    with retry.recorded_waits() as waits, Running(server):
        result = wait_for(lambda: server.scheduler.results, what="the first scheduled poll")[0]
    assert result.ok and result.attempts == 2 and result.status_code == 200
    # /api/poll's Retry-After: 1 does not shorten the file's first wait of 30 s.
    assert waits == [30]
    rows = finished_runs(db_url)
    assert [(r[0], r[1]) for r in rows] == [("scheduler", 503), ("scheduler", 200)]
    assert rows[1][3] > 0


def test_the_schedule_comes_from_scheduler_yaml_unless_overridden(tmp_path):
    base = dict(database_url=f"sqlite:///{tmp_path}/x.db", inngest_signing_key=SIGNING_KEY)
    s = build_scheduler(load_settings(**base))
    assert s.schedule.description == "cron '*/10 * * * *' (Etc/UTC) from scheduler.yaml"
    assert s.attempt_deadline == 540
    s = build_scheduler(load_settings(**base, inngest_polling_cron="* * * * *"))
    assert "'* * * * *'" in s.schedule.description
    assert s.schedule.description.endswith("from INNGEST_POLLING_CRON")
    assert s.job.retry.max_backoff == timedelta(seconds=120)
