"""Processes and databases the benchmark starts, each stopped or dropped in `finally`."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.scenarios import Scenario

BIN = Path(sys.executable).parent
CLI = str(BIN / "gitlab-insights")
SIM_CLI = str(BIN / "gitlab-sim")
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://gi:gi@127.0.0.1:5432/gi")
SIGNING_KEY = "signkey-bench-" + "b3" * 32  # a fake key, for this benchmark only


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Simulator:
    """`gitlab-sim serve` in its own process, with the scenario's data and latency."""

    def __init__(self, sc: Scenario, log_dir: Path) -> None:
        self.sc = sc
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=120)
        self._log = open(log_dir / "simulator.log", "wb")  # noqa: SIM115 - closed in stop()
        args = [
            SIM_CLI,
            "serve",
            "--port",
            str(self.port),
            "--seed",
            str(sc.seed),
            "--users",
            str(sc.users),
            "--projects",
            str(sc.projects),
            "--issues",
            str(sc.issues),
            "--mrs",
            str(sc.mrs),
            "--notes",
            str(sc.notes),
            "--big-project-issues",
            str(sc.big_project_issues),
            "--big-project-notes",
            str(sc.big_project_notes),
            "--latency-ms",
            "0",  # set after the setup calls, see start()
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)

    def start(self) -> Simulator:
        _wait_http(f"{self.url}/_sim/health", self.proc, "the simulator")
        return self

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def set_latency(self, ms: float) -> None:
        self.http.post("/_sim/config", json={"latency_ms": ms}).raise_for_status()

    def world(self) -> dict[str, Any]:
        r = self.http.get("/_sim/world")
        r.raise_for_status()
        return r.json()

    def requests(self) -> list[dict[str, Any]]:
        r = self.http.get("/_sim/requests")
        r.raise_for_status()
        return r.json()["requests"]

    def clear_requests(self) -> None:
        """Before a measured phase: an empty request log and every page pre-encoded (the
        simulator's CPU then stays small next to the service's; bench/README.md)."""
        self.http.post("/_sim/prerender").raise_for_status()
        self.http.delete("/_sim/requests").raise_for_status()

    def stop(self) -> None:
        try:
            self.http.close()
            _stop(self.proc)
        finally:
            self._log.close()


NEWEST_SCHEMA = Path(__file__).parent.parent / "tests" / "fixtures" / "newest_schema.sql"


class Database:
    """A fresh, migrated database: PostgreSQL (CREATE/DROP DATABASE) or a SQLite file."""

    def __init__(self, kind: str, label: str, schema: str = "story") -> None:
        self.kind = kind
        # "newest": built from the newest original app's own schema, then adopted.
        self.schema = schema
        self.name = f"gi_bench_{label.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        self._dir: str | None = None
        if kind == "postgres":
            base = PG_ADMIN_URL.rsplit("/", 1)[0]
            self.url = f"{base}/{self.name}"
        else:
            self._dir = tempfile.mkdtemp(prefix="gi_bench_")
            self.url = f"sqlite+aiosqlite:///{self._dir}/{self.name}.db"

    async def _admin(self, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def _load_newest_schema(self) -> None:
        import asyncpg

        if self.kind != "postgres":
            raise SystemExit("--schema newest needs PostgreSQL (the newest app runs on it)")
        conn = await asyncpg.connect(self.url)
        try:
            await conn.execute(NEWEST_SCHEMA.read_text())
        finally:
            await conn.close()

    def create(self) -> Database:
        if self.kind == "postgres":
            asyncio.run(self._admin(f'CREATE DATABASE "{self.name}"'))
        if self.schema == "newest":
            asyncio.run(self._load_newest_schema())
        env = {**os.environ, "DATABASE_URL": self.url, "LOG_LEVEL": "WARNING"}
        subprocess.run([CLI, "migrate"], env=env, check=True, capture_output=True)
        return self

    def drop(self) -> None:
        if self.kind == "postgres":
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        elif self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)


class Service:
    """`gitlab-insights serve --no-migrate` in its own process; signed polls over HTTP."""

    def __init__(self, sc: Scenario, db_url: str, gitlab_url: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "GITLAB_INSTANCE_URL": gitlab_url,
            "INNGEST_SIGNING_KEY": SIGNING_KEY,
            "LOG_LEVEL": "WARNING",
            "POLL_CONCURRENCY": str(sc.poll_concurrency),
            "GITLAB_USER_CONCURRENCY": str(sc.user_concurrency),
            "GITLAB_MAX_IN_FLIGHT": str(sc.max_in_flight),
        }
        # BENCH_ENV_X=v passes X=v to the service (experiments with other settings).
        prefix = "BENCH_ENV_"
        env.update({k[len(prefix) :]: v for k, v in os.environ.items() if k.startswith(prefix)})
        self._log = open(log_dir / "service.log", "ab")  # noqa: SIM115 - closed in stop()
        args = [CLI, "serve", "--no-migrate", "--port", str(self.port)]
        if os.environ.get("BENCH_PROFILE"):
            # py-spy / pyinstrument wrapper, e.g. BENCH_PROFILE="py-spy record -o prof.svg --"
            args = os.environ["BENCH_PROFILE"].split() + args
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.ps: psutil.Process | None = None

    def start(self) -> Service:
        _wait_http(f"{self.url}/healthz", self.proc, "the service")
        self.ps = self._server_process()
        return self

    def _server_process(self) -> psutil.Process:
        """The Python process serving HTTP (the Popen child itself unless a profiler wraps it)."""
        me = psutil.Process(self.proc.pid)
        for p in [me, *me.children(recursive=True)]:
            try:
                if any(c.laddr.port == self.port for c in p.net_connections(kind="tcp")):
                    return p
            except psutil.Error:
                continue
        return me

    def reset_peak_rss(self) -> None:
        assert self.ps is not None
        # Linux: writing 5 resets VmHWM (the peak RSS) to the current RSS.
        with suppress(OSError):
            Path(f"/proc/{self.ps.pid}/clear_refs").write_text("5")

    def peak_rss_mb(self) -> float:
        assert self.ps is not None
        for line in Path(f"/proc/{self.ps.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return self.ps.memory_info().rss / 2**20

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user + t.system

    def poll(self, body: dict[str, Any] | None = None, timeout: float = 3600) -> dict[str, Any]:
        """One signed POST /api/poll with `body` (default `{}`)."""
        import json

        from app.security.signing import sign_request

        raw = json.dumps(body or {}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Inngest-Signature": sign_request(raw, SIGNING_KEY, int(time.time())),
        }
        r = httpx.post(f"{self.url}/api/poll", content=raw, headers=headers, timeout=timeout)
        if r.status_code != 200:
            raise RuntimeError(f"/api/poll answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def stop(self) -> None:
        try:
            _stop(self.proc)
        finally:
            self._log.close()


@contextmanager
def running(thing: Any):
    """Start `thing` (Simulator/Service) and always stop it; create and always drop a DB."""
    try:
        if isinstance(thing, Database):
            yield thing.create()
        else:
            yield thing.start()
    finally:
        if isinstance(thing, Database):
            thing.drop()
        else:
            thing.stop()
