"""A GitLab that cannot be reached, with real parts: the real wires against a closed local
port (connection refused), a name under .invalid (DNS failure) and a plain-HTTP listener
addressed as https:// (TLS failure); `gitlab-insights poll` run as a user runs it; /api/poll
on the real server. Everything is counted (requests, connections, log lines), never timed.
README: "When GitLab is down or cannot be reached".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.api.errors import ErrorBody
from app.gitlab.transport import AiohttpWire, HttpxWire, WireError
from app.settings import Settings
from gitlab_sim.server import SimulatorServer
from tests.support import (
    LiveServer,
    add_user,
    assert_equal_truth,
    free_port,
    make_settings,
    project_tuple,
    query,
)

ROOT = Path(__file__).resolve().parents[2]
TOKENS = ["glpat-first-SECRET-token", "glpat-second-SECRET-token"]
MAX_ATTEMPTS = 4
THRESHOLD = 5  # GITLAB_UNREACHABLE_THRESHOLD's default
# 2 users x 3 projects. Each finished round of a user's projects counts at least one request
# per project (3), so the 5th comes within 2 rounds; with the other user's round in flight at
# most 3 rounds of 6 requests (issues, MRs) of 4 attempts are sent. Without the detector:
# 2 users x 4 rounds x 6 requests x 4 attempts = 192 (the issue counted 141 retry lines).
MAX_REQUESTS = 3 * 3 * 2
MAX_SENT = MAX_REQUESTS * MAX_ATTEMPTS


class PlainListener:
    """A plain-HTTP listener on 127.0.0.1 that counts connections: addressed as https://,
    every TLS handshake fails (it answers a ClientHello with an HTTP 400)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stopped = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if self._stopped:
                conn.close()
                return
            with self._lock:
                self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def __enter__(self) -> PlainListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        # Closing a socket does not wake a thread blocked in accept(): a last connection does.
        with socket.create_connection(("127.0.0.1", self.port), timeout=5):
            pass
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def plain() -> Iterator[PlainListener]:
    with PlainListener() as listener:
        yield listener


def closed_port() -> int:
    return free_port()  # bound, then closed again: nothing listens there


def instance_url(kind: str, plain: PlainListener) -> str:
    if kind == "connection_refused":
        return f"http://127.0.0.1:{closed_port()}"
    if kind == "dns_failure":
        return "https://gitlab.example.invalid"
    return f"https://127.0.0.1:{plain.port}"


KINDS = ["connection_refused", "dns_failure", "tls_failure"]
WHY = {
    "connection_refused": "connection refused",
    "dns_failure": "DNS lookup failed",
    "tls_failure": "TLS handshake failed",
}


# --- the wires read real failures ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_both_wires_name_a_real_connection_failure(kind, plain):
    url = instance_url(kind, plain) + "/api/v4/user"
    settings = Settings(_env_file=None, gitlab_instance_url=url.split("/api")[0])  # type: ignore[call-arg]
    aio = AiohttpWire(settings)
    try:
        with pytest.raises(WireError) as info:
            await aio.get(url, {})
    finally:
        await aio.aclose()
    assert info.value.connect_failure == kind
    async with httpx.AsyncClient() as http:
        with pytest.raises(WireError) as info:
            await HttpxWire(http, settings).get(url, {})
    assert info.value.connect_failure == kind


async def test_an_answer_is_no_connection_failure(plain):
    # The same listener addressed as http:// answers (a 400): reachable.
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    aio = AiohttpWire(settings)
    try:
        answer = await aio.get(f"http://127.0.0.1:{plain.port}/api/v4/user", {})
    finally:
        await aio.aclose()
    assert answer.status == 400


# --- gitlab-insights poll, as the user runs it --------------------------------------------


def seed_two_users(db_url: str, projects_each: int = 3) -> list[str]:
    return [
        add_user(
            db_url,
            f"u{u}@example.com",
            TOKENS[u],
            [(str(10 * u + p), f"p{p}", f"group/p{p}") for p in range(projects_each)],
        )
        for u in range(2)
    ]


def run_poll_command(db_url: str, gitlab_url: str, tmp_path: Path, **env: str):
    """`gitlab-insights poll` in a child process, with the test-speed retry settings (zero
    waits) the suite uses and nothing else changed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GITLAB_", "LOG_"))}
    return subprocess.run(
        [str(Path(sys.executable).parent / "gitlab-insights"), "poll"],
        cwd=tmp_path,
        env={
            **clean,
            "DATABASE_URL": db_url,
            "GITLAB_INSTANCE_URL": gitlab_url,
            "GITLAB_BACKOFF_BASE": "0",
            "GITLAB_BACKOFF_MAX": "0",
            "USER_RETRY_BACKOFF_BASE": "0",
            "SYNC_BACKFILL_DAYS": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_poll_stops_early_with_one_clear_line(kind, db_url, plain, tmp_path):
    seed_two_users(db_url)  # 2 users, 6 projects
    url = instance_url(kind, plain)
    r = run_poll_command(db_url, url, tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""  # no table of users all failing the same way
    lines = r.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert errors == [lines[-1]]
    host = url.split("://", 1)[1]
    assert errors[0].startswith(
        f"error: GitLab at {url} cannot be reached: {WHY[kind]} ({THRESHOLD} requests in a row)."
    )
    assert host in errors[0] and "/api/v4" not in errors[0] and "?" not in errors[0]
    # The rest is progress: "polling..." and one line per user; no log line at all.
    progress = lines[:-1]
    assert progress[0] == "polling..." and len(progress) == 3, r.stderr
    assert not any(t in r.stderr for t in TOKENS)
    if kind == "tls_failure":
        assert 0 < plain.connections <= MAX_SENT
    assert query(db_url, "SELECT trigger, status_code, error FROM poll_run") == [
        ("cli", 503, "gitlab_unreachable")
    ]
    assert query(db_url, "SELECT count(*) FROM sync_cursor WHERE cursor_at IS NOT NULL") == [(0,)]
    assert query(db_url, 'SELECT count(*) FROM "LastSync"') == [(0,)]


def json_lines(stderr: str) -> list[dict]:
    return [json.loads(ln) for ln in stderr.splitlines() if ln.startswith("{")]


def test_poll_logs_one_line_per_request_not_per_attempt(db_url, tmp_path):
    seed_two_users(db_url)
    r = run_poll_command(
        db_url,
        f"http://127.0.0.1:{closed_port()}",
        tmp_path,
        LOG_LEVEL="DEBUG",
        LOG_FORMAT="json",
    )
    assert r.returncode == 1, r.stderr
    logs = json_lines(r.stderr)
    attempts = [
        rec for rec in logs if rec["level"] == "DEBUG" and "-> transport error" in rec["message"]
    ]
    retries = [rec for rec in logs if ": retry " in rec["message"]]
    requests = [rec for rec in logs if "failed after" in rec["message"]]
    assert all(rec["level"] == "DEBUG" for rec in retries)
    assert all(rec["level"] == "INFO" for rec in requests)
    assert 0 < len(attempts) <= MAX_SENT
    assert THRESHOLD <= len(requests) <= MAX_REQUESTS
    assert len(retries) < len(attempts)  # a request's first attempt is no retry
    above_info = [rec for rec in logs if rec["level"] not in ("DEBUG", "INFO")]
    assert above_info == []
    gave_up = [rec for rec in logs if "this run sends no more GitLab requests" in rec["message"]]
    assert len(gave_up) == 1
    # No user got to its third attempt (USER_SYNC_ATTEMPTS allows 4).
    users = [rec for rec in logs if rec["message"].startswith("user sync")]
    assert len(users) == 2 and all(rec["attempts"] <= 2 for rec in users), users


# --- /api/poll ----------------------------------------------------------------------------


def test_api_poll_answers_503_with_retry_after_and_skips_users_not_attempted(db_url):
    port = closed_port()
    with SimulatorServer(seed=3, users=3, projects=3, issues=4, merge_requests=2, notes=1) as sim:
        for pid in (1, 2, 3):  # every user reads every project: all 3 sync once GitLab is back
            sim.world.project(pid).members |= {sim.world.user(f"user{i}").id for i in (1, 2, 3)}
        ids = [
            add_user(
                db_url,
                f"u{i}@example.com",
                sim.token(f"user{i}"),
                [project_tuple(sim, p) for p in (1, 2, 3)],
            )
            for i in (1, 2, 3)
        ]
        gitlab = f"http://127.0.0.1:{port}"  # nothing listens there yet
        settings = make_settings(
            db_url,
            gitlab,
            poll_concurrency=1,
            gitlab_unreachable_threshold=3,
            gitlab_down_retry_after_seconds=77,
        )
        with LiveServer(settings) as server:
            r = server.poll()
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "77"
            s = r.json()
            # The shared error shape: a code and a sentence naming the host and why.
            ErrorBody.model_validate({"error": s["error"], "detail": s["detail"]})
            assert s["error"] == "gitlab_unreachable"
            assert s["detail"].startswith(
                f"GitLab at {gitlab} cannot be reached: connection refused (3 requests in a row)."
            )
            assert s["success"] is False
            # One user at a time: the first one tried once (its 3 projects' requests reach the
            # threshold), the others never started, and reported as such.
            assert sorted((u["status"], u["reason"], u["attempts"]) for u in s["users"]) == [
                ("failed", "projects_failed", 1),
                ("skipped", "gitlab_unreachable", 0),
                ("skipped", "gitlab_unreachable", 0),
            ]
            assert s["skipped_reasons"] == {"gitlab_unreachable": 2}
            assert "2 not attempted" in s["detail"]
            assert not any(sim.token(f"user{i}") in r.text for i in (1, 2, 3))
            assert query(db_url, "SELECT status_code, error FROM poll_run") == [
                (503, "gitlab_unreachable")
            ]
            assert query(
                db_url, "SELECT count(*) FROM sync_cursor WHERE cursor_at IS NOT NULL"
            ) == [(0,)]

        # GitLab comes back at the same address: the next run misses nothing.
        with SimulatorServer(sim.world, port=port), LiveServer(settings) as server:
            r = server.poll()
            assert r.status_code == 200, r.text
            assert r.json()["processed"] == 3
        for i, uid in enumerate(ids, 1):
            assert_equal_truth(db_url, uid, sim, f"user{i}", [1, 2, 3])
