"""Helpers for the reliability tests: the service as a real subprocess, chaos faults, and the
"no cursor past unstored data" invariant checked against the simulator's ground truth."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from app.settings import Settings
from gitlab_sim.faults import FaultSpec
from gitlab_sim.server import SimulatorServer
from gitlab_sim.world import World
from tests.support import SIGNING_KEY, actual, free_port, query, truth

# The test defaults of tests.support.make_settings, as environment variables.
BASE_ENV: dict[str, str] = {
    "INNGEST_SIGNING_KEY": SIGNING_KEY,
    "GITLAB_BACKOFF_BASE": "0",
    "GITLAB_BACKOFF_MAX": "0",
    "GITLAB_RATE_LIMIT_MAX_WAIT": "0",
    "USER_RETRY_BACKOFF_BASE": "0",
    "MIN_REFRESH_INTERVAL_SECONDS": "0",
    "SYNC_BACKFILL_DAYS": "0",
    "LOG_FORMAT": "json",
    "GITLAB_READ_TIMEOUT": "5",
}


class ServiceProcess:
    """`gitlab-insights serve --no-migrate` in its own process (SIGKILL-able, its own core)."""

    def __init__(self, db_url: str, gitlab_url: str, workdir: Path, **env: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / f"service-{self.port}.log"
        settings_names = {n.upper() for n in Settings.model_fields}
        # Nothing from the caller's environment may configure the service by accident.
        self.env = {k: v for k, v in os.environ.items() if k.upper() not in settings_names}
        self.env.update(BASE_ENV)
        self.env.update(DATABASE_URL=db_url, GITLAB_INSTANCE_URL=gitlab_url)
        self.env.update({k.upper(): str(v) for k, v in env.items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--no-migrate", "--port", str(self.port)],
            cwd=self.workdir,  # no stray .env
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("service did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no lease release, nothing flushed."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill_when(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """SIGKILL at a moment `predicate` holds of the database. The process is frozen
        (SIGSTOP) while it is checked, after a moment for what it already sent to finish, so
        the state the predicate saw is the state the kill leaves (a poll's users finishing
        together would otherwise slip between the check and the kill)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(self.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(0.05)
                if predicate():
                    self.kill()
                    return True
            finally:
                if self.proc.poll() is None:
                    os.kill(self.proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def poll(self, body: Any = None, *, timeout: float = 300) -> httpx.Response:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        return httpx.post(
            f"{self.url}/api/poll",
            headers={"Authorization": f"Bearer {SIGNING_KEY}"},
            timeout=timeout,
            **kwargs,
        )


# --- chaos ---------------------------------------------------------------------------------

CHAOS_KINDS: list[dict[str, Any]] = [
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 502},
    {"kind": "status", "status": 503},
    {"kind": "rate_limit", "retry_after": 1},
    {"kind": "rate_limit", "retry_after": 1, "retry_after_format": "date"},
    {"kind": "slow"},  # delay set by the caller, above the read timeout
    {"kind": "drop"},
    {"kind": "malformed"},
    {"kind": "truncated"},
]


def add_chaos(world: World, *, rate: float, seed: int, slow_delay: float) -> list[FaultSpec]:
    """Every fault kind on GitLab's project routes, `rate` of the responses faulty in total.

    Rules are tried in order and each draws from its own seeded RNG, so per-rule probability p
    with 1 - (1 - p)^n = rate gives `rate` overall; page-2+ requests get the same odds, so
    faults land mid-pagination too.
    """
    p = 1 - (1 - rate) ** (1 / len(CHAOS_KINDS))
    specs = []
    for i, kw in enumerate(CHAOS_KINDS):
        extra = {"delay": slow_delay} if kw["kind"] == "slow" else {}
        specs.append(
            world.add_fault(
                FaultSpec(path=r"^/api/v4/projects/", probability=p, seed=seed + i, **kw, **extra)
            )
        )
    return specs


# --- the cursor invariant ----------------------------------------------------------------------


def _ms(value: datetime | str) -> int:
    if isinstance(value, str):  # SQLite hands raw-SQL timestamps back as text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def event_times(world: World, project_id: int) -> dict[str, int]:
    """gitlabEventId -> updated_at (ms) of every item and note of a project, now."""
    out: dict[str, int] = {}
    with world.lock:
        p = world.project(project_id)
        for kind, prefix in (("issue", "issue"), ("merge_request", "mr")):
            for it in p.index(kind).by_iid.values():  # type: ignore[arg-type]
                out[f"{prefix}-{it.id}"] = it.updated_ms
                for n in it.notes:
                    out[f"note-{n.id}"] = n.updated_ms
    return out


def check_stored_before(
    db_url: str,
    sim: SimulatorServer,
    user_id: str,
    username: str,
    project_ids: Iterable[int],
    horizon: datetime,
    got: dict[str, dict] | None = None,
    *,
    newest: bool = False,
) -> list[str]:
    """Violations of: every ground-truth event of these projects last changed before `horizon`
    is stored, in its current form. Read the horizon (cursor / LastSync) BEFORE calling: the
    stored rows are read next, then the truth, so a concurrent sync can only help."""
    got = actual(db_url, user_id) if got is None else got
    limit = _ms(horizon) - 1  # the cursor is truncated to ms; the world stamps whole ms
    problems = []
    for pid in project_ids:
        with sim.world.lock:  # one consistent snapshot of truth and times
            want = truth(sim, username, [pid], newest=newest)
            times = event_times(sim.world, pid)
        for key, row in want.items():
            if times[key] >= limit:
                continue
            if key not in got:
                problems.append(f"{username} p{pid}: {key} missing below {horizon}")
            elif got[key] != row:
                problems.append(f"{username} p{pid}: {key} stale below {horizon}")
    return problems


def cursor_rows(db_url: str) -> list[tuple[str, str, datetime]]:
    return query(
        db_url,
        "SELECT user_id, gitlab_project_id, cursor_at FROM sync_cursor WHERE cursor_at IS NOT NULL",
    )


def last_sync_rows(db_url: str) -> list[tuple[str, datetime]]:
    return query(db_url, 'SELECT "userId", "lastSyncAt" FROM "LastSync"')


def check_all_horizons(
    db_url: str,
    sim: SimulatorServer,
    users: dict[str, tuple[str, list[int]]],
    *,
    sample: int | None = None,
    rng: random.Random | None = None,
    newest: bool = False,
) -> tuple[list[str], int]:
    """Check every (or `sample` random) cursor and LastSync; (violations, horizons checked)."""
    cursors = cursor_rows(db_url)
    lasts = last_sync_rows(db_url)
    if sample is not None and rng is not None:
        cursors = rng.sample(cursors, min(sample, len(cursors)))
        lasts = rng.sample(lasts, min(max(sample // 3, 1), len(lasts)))
    problems: list[str] = []
    for user_id, pid, cursor_at in cursors:
        username, _ = users[user_id]
        problems += check_stored_before(
            db_url, sim, user_id, username, [int(pid)], cursor_at, newest=newest
        )
    for user_id, last_at in lasts:
        username, pids = users[user_id]
        problems += check_stored_before(
            db_url, sim, user_id, username, pids, last_at, newest=newest
        )
    return problems, len(cursors) + len(lasts)


def execute(db_url: str, sql: str, **params: Any) -> None:
    """Run one write statement (tests.support.query is for SELECTs)."""
    import sqlalchemy as sa

    from tests.support import _with_session, run

    async def work(s):
        await s.execute(sa.text(sql), params)

    run(_with_session(db_url, work))


AUDIT_DIR = Path(__file__).parent / "audit"


def audited_env(audit_file: Path) -> dict[str, str]:
    """Environment for a ServiceProcess whose user syncs are logged to `audit_file`."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        "PYTHONPATH": f"{AUDIT_DIR}{os.pathsep}{path}" if path else str(AUDIT_DIR),
        "GI_SYNC_AUDIT": str(audit_file),
    }


def overlapping_syncs(audit_file: Path) -> tuple[list[str], int]:
    """Pairs of syncs of one user whose lease-held work overlapped; and how many syncs."""
    import json

    by_user: dict[str, list[tuple[float, float, int]]] = {}
    lines = audit_file.read_text().splitlines() if audit_file.exists() else []
    for line in lines:
        e = json.loads(line)
        by_user.setdefault(e["user"], []).append((e["start"], e["end"], e["pid"]))
    problems = []
    for user, spans in by_user.items():
        spans.sort()
        for (s1, e1, p1), (s2, e2, p2) in zip(spans, spans[1:], strict=False):
            if s2 < e1:
                problems.append(
                    f"user {user}: [{s1:.3f},{e1:.3f}] pid {p1} / [{s2:.3f},{e2:.3f}] pid {p2}"
                )
    return problems, len(lines)
