"""`gitlab-sim demo`: the whole system on one machine, with nothing configured.

Starts the GitLab simulator (seeded demo data) on a free loopback port, makes a fresh SQLite
database in --dir, adds the simulator's users (with their tokens) and their projects, then
runs the service with the built-in scheduler on a fast cron, plus one poll right away.
Every run is printed, whoever triggered it (the scheduler, a curl to /api/poll, `gitlab-insights
poll`): the demo watches the service's poll_run table, and prints the "Event" row count read
from the database with each. Ctrl-C stops everything and exits 0. No request ever leaves
127.0.0.1: GITLAB_INSTANCE_URL is pointed at the simulator whatever the environment says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shlex
import signal
import socket
import sqlite3
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

DB_NAME = "gitlab-insights.db"
EMAIL_DOMAIN = "demo.example"
# Small enough to sync in a second or two, varied enough to show every event kind.
SIMULATOR_DATA = dict(seed=1, users=3, projects=4, issues=20, merge_requests=10, notes=3, days=30)
# Seconds between new issues (each with a comment) in the simulator.
ACTIVITY_EVERY = 20.0
# The suggested refresh of one user comes seconds after the demo's own first poll, which a
# service at the default MIN_REFRESH_INTERVAL_SECONDS (30) would skip as `fresh`: the demo
# lets every refresh sync unless the environment says otherwise.
DEMO_MIN_REFRESH_SECONDS = "0"


def say(line: str = "") -> None:
    # Flushed at once: the demo is often watched through a pipe (tests, `| tee`).
    print(line, flush=True)


class DemoError(Exception):
    pass


def _check_port(port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(f"port {port} is in use: pass --port with a free one") from None


def _fresh_database(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    # Only our own files: --dir may well be a folder holding other things.
    for suffix in ("", "-wal", "-shm", "-journal"):
        (directory / f"{DB_NAME}{suffix}").unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{(directory / DB_NAME).resolve()}"


async def _seed(settings: Any, world: dict[str, Any]) -> tuple[list[tuple[str, str]], int]:
    """Demo users (tokens from the simulator) and the projects each one is a member of.

    Returns each user's (e-mail, id) and the number of monitored projects."""
    from app.db import repository as repo
    from app.runtime import open_runtime

    users: list[tuple[str, str]] = []
    projects = 0
    async with open_runtime(settings) as rt, rt.sessionmaker() as s, s.begin():
        for u in world["users"]:
            user = await repo.create_user_with_account(
                s,
                email=f"{u['username']}@{EMAIL_DOMAIN}",
                name=u["name"],
                access_token=u["token"],
                refresh_token=None,
                expires_at=None,
                gitlab_user_id=str(u["id"]),
            )
            users.append((user.email or "", user.id))
            for p in world["projects"]:
                if u["id"] in p["members"]:
                    await repo.add_project(
                        s,
                        user_id=user.id,
                        gitlab_project_id=str(p["id"]),
                        name=p["name"],
                        path=p["path_with_namespace"],
                    )
                    projects += 1
    return users, projects


class _Activity(threading.Thread):
    """New issues with a comment now and then, so later polls store events too."""

    def __init__(self, world: Any, every: float = ACTIVITY_EVERY) -> None:
        super().__init__(name="demo-activity", daemon=True)
        self.world = world
        self.every = every
        self.stopping = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)  # demo data, not security
        n = 0
        while not self.stopping.wait(self.every):
            n += 1
            pid = rng.choice(sorted(self.world.projects))
            issue = self.world.create_issue(
                pid, f"Demo issue {n}", description="Created while the demo runs.", labels=["demo"]
            )
            self.world.add_note(pid, "issue", issue.iid, f"A first comment on demo issue {n}.")


_RUN_COLUMNS = (
    "id, trigger, status_code, total, processed, failed, skipped, "
    "events_stored, events_updated, error, started_at, finished_at, skipped_reasons"
)


class _RunWatcher(threading.Thread):
    """Prints every finished run in the service's poll_run table, whoever triggered it.

    It reads the database file (read-only, stdlib sqlite3), never the service's code: a
    scheduled poll, a curl to /api/poll and `gitlab-insights poll` all show up the same way,
    each with the "Event" row count as the database has it.
    """

    def __init__(self, db_file: Path, every: float = 0.5) -> None:
        super().__init__(name="demo-runs", daemon=True)
        self.db_file = db_file
        self.every = every
        self.stopping = threading.Event()
        self.seen: set[str] = set()

    def run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.report_new()
            except sqlite3.Error:
                continue  # busy or mid-migration: next round

    def report_new(self) -> None:
        with contextlib.closing(
            sqlite3.connect(f"file:{self.db_file}?mode=ro", uri=True, timeout=5)
        ) as db:
            rows = db.execute(
                f"SELECT {_RUN_COLUMNS} FROM poll_run "  # noqa: S608 - constant columns
                "WHERE finished_at IS NOT NULL ORDER BY finished_at, id"
            ).fetchall()
            fresh = [r for r in rows if r[0] not in self.seen]
            if not fresh:
                return
            events = db.execute('SELECT count(*) FROM "Event"').fetchone()[0]
        for r in fresh:
            self.seen.add(r[0])
            say(self.line(len(self.seen), r, events))

    @staticmethod
    def line(number: int, r: tuple[Any, ...], events: int) -> str:
        from app.sync.results import skip_reasons_text

        (_id, trigger, code, total, processed, failed, skipped, stored, updated, error) = r[:10]
        started, finished = (_parse_time(t) for t in r[10:12])
        why = skip_reasons_text(_parse_reasons(r[12]))
        took = (
            f" in {(finished - started).total_seconds() * 1000:.0f} ms"
            if started and finished
            else ""
        )
        stamp = datetime.now().strftime("%H:%M:%S")
        text = (
            f"[{stamp}] poll #{number} ({trigger}, HTTP {code}): {processed} processed, "
            f"{failed} failed, {skipped} skipped{f' ({why})' if why else ''} of {total} users; "
            f"{stored} events stored, "
            f"{updated} updated{took}; the Event table holds {events} rows"
        )
        return text + (f"; error: {error}" if error else "")


def _parse_reasons(value: Any) -> dict[str, int] | None:
    """poll_run.skipped_reasons as SQLite keeps it: JSON text (NULL while running)."""
    try:
        reasons = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return reasons if isinstance(reasons, dict) else None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime) or value is None:
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _refresh_note(seconds: float) -> str:
    """Why the suggested refresh may answer `skipped 1 (fresh)`, or why it will not."""
    from app.settings import Settings

    default = Settings.model_fields["min_refresh_interval_seconds"].default
    if seconds <= 0:
        return (
            "  (it always syncs: the demo sets MIN_REFRESH_INTERVAL_SECONDS=0; a service "
            f"skips a user synced in the last {default:g} s as fresh, by default)"
        )
    return (
        f"  (a user synced in the last {seconds:g} s is skipped as fresh: "
        "MIN_REFRESH_INTERVAL_SECONDS)"
    )


def _cli_line(db_url: str, gitlab_url: str, command: str) -> str:
    """`gitlab-insights <command>` aimed at the demo's database and simulator, ready to paste
    in another terminal in any folder (without them it would make ./gitlab-insights.db)."""
    script = Path(sys.executable).parent / "gitlab-insights"  # the venv's, next to Python
    program = (
        shlex.quote(str(script))
        if script.is_file()
        else f"{shlex.quote(sys.executable)} -m app.cli"
    )
    return (
        f"DATABASE_URL={shlex.quote(db_url)} GITLAB_INSTANCE_URL={shlex.quote(gitlab_url)} "
        f"{program} {command}"
    )


def _report_failed_call(r: Any) -> None:
    """The built-in scheduler's calls that got no answer at all (no run was recorded)."""
    if not r.ok and not r.summary:
        stamp = datetime.now().strftime("%H:%M:%S")
        say(f"[{stamp}] scheduler call #{r.number} FAILED after {r.attempts} attempt(s): {r.error}")


def run_demo(*, port: int = 8000, directory: str = "./demo", cron: str = "* * * * *") -> int:
    from app.db.migrate import MigrationError, upgrade_to_head
    from app.scheduler.runner import RunnerOptions, SchedulerStartError, build_server
    from app.settings import ConfigurationError, load_settings
    from gitlab_sim.server import SimulatorServer

    def stop_on_sigterm(*_: object) -> None:
        raise KeyboardInterrupt

    # uvicorn restores this handler after its graceful shutdown and re-raises the signal:
    # SIGTERM then ends the demo as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sim = None
    activity = None
    watcher = None
    try:
        _check_port(port)
        db_url = _fresh_database(Path(directory))
        sim = SimulatorServer(**SIMULATOR_DATA).start()
        key = "signkey-demo-" + secrets.token_hex(16)
        overrides: dict[str, Any] = dict(
            database_url=db_url,
            gitlab_instance_url=sim.url,
            inngest_signing_key=key,
            inngest_signing_key_fallback=None,
            inngest_polling_cron=cron,
            allow_unsigned_polls=False,
            min_refresh_interval_seconds=os.environ.get(
                "MIN_REFRESH_INTERVAL_SECONDS", DEMO_MIN_REFRESH_SECONDS
            ),
            # The demo's own lines are the show; logs only for warnings, unless asked for.
            log_level=os.environ.get("LOG_LEVEL", "WARNING"),
            log_format=os.environ.get("LOG_FORMAT", "pretty"),
        )
        try:
            settings = load_settings(**overrides)
        except ConfigurationError as exc:
            raise DemoError(str(exc)) from None
        upgrade_to_head(settings.database_url)
        users, projects = asyncio.run(_seed(settings, sim.world.describe()))
        activity = _Activity(sim.world)
        activity.start()
        db_file = Path(directory).resolve() / DB_NAME
        watcher = _RunWatcher(db_file)
        watcher.start()

        n = len(users)
        say(f"GitLab simulator: {sim.url} ({n} users, {len(sim.world.projects)} projects)")
        say(f"database: {db_file} ({n} users, {projects} monitored projects)")
        for email, user_id in users:
            say(f"  user {email}  id {user_id}")
        say(f"built-in scheduler: '{cron}' (UTC) plus one poll now")
        say(f"the simulator gains an issue with a comment every {ACTIVITY_EVERY:g} s")
        say("every run is printed below, scheduled or manual, with what triggered it")

        def listening(base: str) -> None:
            say(f"gitlab-insights: {base} - open {base}/docs")
            say("manual refresh of everyone:")
            say(f"  curl -sS -X POST {base}/api/poll -H 'Authorization: Bearer {key}'")
            say(f"manual refresh of {users[0][0]}:")
            say(
                f"  curl -sS -X POST {base}/api/poll -H 'Authorization: Bearer {key}' "
                f"-H 'Content-Type: application/json' -d '{{\"user_ids\": [\"{users[0][1]}\"]}}'"
            )
            say(_refresh_note(settings.min_refresh_interval_seconds))
            say("the command line on this demo (another terminal; also runs, status, users list):")
            say("  " + _cli_line(db_url, sim.url, "poll"))
            say("Ctrl-C to stop.")

        options = RunnerOptions(
            fire_at_start=True,
            on_result=_report_failed_call,
            on_listening=listening,
            graceful_shutdown_seconds=5,
        )
        try:
            server = build_server(settings, host="127.0.0.1", port=port, options=options)
        except SchedulerStartError as exc:
            raise DemoError(str(exc)) from None
        try:
            server.run()
        except KeyboardInterrupt:
            pass  # uvicorn already shut down gracefully; this is its re-raised signal
        except SystemExit:
            # uvicorn exits this way when it cannot start (port taken, lifespan failure).
            raise DemoError("the service did not start (see the log above)") from None
    except KeyboardInterrupt:
        pass
    except (DemoError, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if activity is not None:
            activity.stopping.set()
            activity.join(timeout=5)
        if watcher is not None:
            watcher.stopping.set()
            watcher.join(timeout=5)
            with contextlib.suppress(sqlite3.Error):
                watcher.report_new()  # runs that finished during shutdown
        if sim is not None:
            sim.stop()
    say("demo stopped")
    return 0
