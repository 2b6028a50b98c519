"""Run one scenario end to end and print one table; results go to bench/results/<name>.json.

cold  = the first poll of the scenario's workload on a freshly started service process
        (empty database; for `incremental`: the poll after the first sync and the changes,
        on a restarted process).
warm  = the same poll again on the same process with nothing changed in GitLab (the steady
        state of a 10-minute schedule: every list comes back empty).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from app.db.models import new_id
from bench.baseline import run_baseline
from bench.fleet import fleet_table, scale_out_phases
from bench.measure import (
    ProjectTruth,
    SeedUser,
    analyse_log,
    count_events,
    lower_bound,
    make_reconciliation_due,
    minimum_requests,
    project_truth,
    reconciliation_requests,
    seed,
)
from bench.procs import Database, Service, Simulator, running
from bench.scenarios import SCENARIOS, Scenario

RESULTS = Path(__file__).parent / "results"


class Bench:
    def __init__(
        self,
        sc: Scenario,
        db: str,
        warm: bool,
        baseline: bool,
        log_dir: Path,
        reconcile: bool = False,
        schema: str = "story",
    ) -> None:
        self.sc = sc
        self.db = db
        # "newest": a database built from the newest original app's schema (threads).
        self.schema = schema
        self.threads = schema == "newest"
        self.warm = warm
        self.baseline = baseline
        self.reconcile = reconcile
        self.log_dir = log_dir
        self.rows: list[dict[str, Any]] = []
        self.L = sc.latency_ms / 1000

    # --- world -----------------------------------------------------------------------------

    def prepare_world(self, sim: Simulator) -> None:
        world = sim.world()
        users = sorted(world["users"], key=lambda u: u["id"])[: self.sc.users]
        self.projects = sorted(world["projects"], key=lambda p: p["id"])
        # Every user monitors every project and, as a member, sees the same items.
        for p in self.projects:
            for u in users:
                if u["id"] not in p["members"]:
                    sim.http.post(
                        f"/_sim/projects/{p['id']}/members", json={"user": u["id"]}
                    ).raise_for_status()
        self.username = users[0]["username"]
        self.seed_users = [
            SeedUser(
                new_id(),
                u["username"],
                u["token"],
                [(str(p["id"]), p["name"], p["path_with_namespace"]) for p in self.projects],
            )
            for u in users
        ]
        self.truths = self.fetch_truths(sim)

    def fetch_truths(self, sim: Simulator) -> dict[str, ProjectTruth]:
        out = {}
        for p in self.projects:
            params = {"username": self.username, "project_id": p["id"], "newest": self.threads}
            r = sim.http.get("/_sim/expected", params=params)
            r.raise_for_status()
            out[str(p["id"])] = project_truth(r.json())
        return out

    @property
    def expected_events(self) -> int:
        return self.sc.users * sum(t.events for t in self.truths.values())

    def mutate(self, sim: Simulator) -> dict[str, set[tuple[str, int]]]:
        """Change `mutate_fraction` of each project's items: half get a new title, half a new
        comment (which touches the item, as GitLab does)."""
        rng = random.Random(self.sc.seed)
        changed: dict[str, set[tuple[str, int]]] = {}
        for pid, t in self.truths.items():
            items = [("issues", i) for i in sorted(t.issues)]
            items += [("merge_requests", i) for i in sorted(t.mrs)]
            k = max(1, round(len(items) * self.sc.mutate_fraction))
            picked = rng.sample(items, k)
            for n, (seg, iid) in enumerate(picked):
                url = f"/_sim/projects/{pid}/{seg}/{iid}"
                if n % 2 == 0:
                    r = sim.http.patch(url, json={"title": f"Edited for the benchmark {n}"})
                else:
                    r = sim.http.post(f"{url}/notes", json={"body": f"Benchmark comment {n}"})
                r.raise_for_status()
            changed[pid] = set(picked)
        return changed

    # --- measurements ------------------------------------------------------------------------

    def _row(
        self, system: str, phase: str, wall: float, stats: Any, events: int, minimum: int
    ) -> dict[str, Any]:
        sc = self.sc
        lb = lower_bound(stats, self.L, sc.poll_concurrency, sc.user_concurrency, sc.max_in_flight)
        return {
            "system": system,
            "phase": phase,
            "wall_s": round(wall, 3),
            "requests": stats.requests,
            "min_requests": minimum,
            "requests_by_kind": stats.by_kind,
            "request_errors": stats.errors,
            "longest_chain": stats.chain,
            "events": events,
            "events_per_s": round(events / wall, 1) if wall > 0 else None,
            "lower_bound_s": round(lb, 3),
            "ratio_to_lower_bound": round(wall / lb, 2) if lb > 0 else None,
        }

    def measure_service(
        self, sim: Simulator, svc: Service, db: Database, phase: str, minimum: int
    ) -> dict[str, Any]:
        sim.clear_requests()
        svc.reset_peak_rss()
        sim_cpu0 = sim.cpu_seconds()
        cpu0 = svc.cpu_seconds()
        t0 = time.perf_counter()
        summary = svc.poll()
        wall = time.perf_counter() - t0
        cpu = svc.cpu_seconds() - cpu0
        sim_cpu = sim.cpu_seconds() - sim_cpu0
        stats = analyse_log(sim.requests())
        events = summary["events"]["stored"] + summary["events"]["updated"]
        row = self._row("service", phase, wall, stats, events, minimum)
        stored = asyncio.run(count_events(db.url))
        row.update(
            peak_rss_mb=round(svc.peak_rss_mb(), 1),
            cpu_s=round(cpu, 2),
            simulator_cpu_s=round(sim_cpu, 2),
            reconcile_requests=summary.get("reconciliation", {}).get("requests", 0),
            events_removed=summary["events"].get("removed", 0),
            # CPU per GitLab request (page): the service's (parsing and storing included)
            # must stand well above the simulator's, or the bench measures the simulator.
            cpu_ms_per_request=_per_request_ms(cpu, stats.requests),
            simulator_cpu_ms_per_request=_per_request_ms(sim_cpu, stats.requests),
            users_processed=summary["processed"],
            users_failed=summary["failed"],
            db_events=stored,
            expected_db_events=self.expected_events,
            complete=stored == self.expected_events and summary["failed"] == 0,
        )
        self.rows.append(row)
        self._print_progress(row)
        return row

    def measure_reconciliation(self, sim: Simulator, svc: Service, db: Database, idle: int) -> None:
        """A day's reconciliations at once (every pair made due), then a warm poll: with
        nothing due again, it must be back at the minimum."""
        asyncio.run(make_reconciliation_due(db.url))
        extra = reconciliation_requests(self.truths, self.sc.users)
        row = self.measure_service(sim, svc, db, "reconcile", idle + extra)
        row["reconcile_min_requests"] = extra
        self.measure_service(sim, svc, db, "after", idle)

    def measure_baseline(
        self, sim: Simulator, db: Database, phase: str, minimum: int
    ) -> dict[str, Any]:
        users = self.seed_users[: self.sc.baseline_users or len(self.seed_users)]
        factor = len(self.seed_users) / len(users)
        sim.clear_requests()
        t0 = time.perf_counter()
        res = asyncio.run(run_baseline(db.url, sim.url, users))
        wall = time.perf_counter() - t0
        stats = analyse_log(sim.requests())
        if factor != 1:
            stats.requests = round(stats.requests * factor)
            stats.per_user_max = stats.per_user_max
            stats.users = len(self.seed_users)
        events = round((res.stored + res.updated) * factor)
        row = self._row("baseline", phase, wall * factor, stats, events, minimum)
        row.update(
            peak_rss_mb=None,
            cpu_s=None,
            extrapolated_from_users=len(users) if factor != 1 else None,
        )
        self.rows.append(row)
        self._print_progress(row)
        return row

    def _print_progress(self, row: dict[str, Any]) -> None:
        print(
            f"  {row['system']:8} {row['phase']:6} {row['wall_s']:8.3f} s "
            f"{row['requests']:>7} requests  {row['events']:>7} events",
            file=sys.stderr,
            flush=True,
        )

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        sc = self.sc
        t_start = time.perf_counter()
        with running(Simulator(sc, self.log_dir)) as sim:
            self.prepare_world(sim)
            print(
                f"{sc.name}: {sc.users} users x {len(self.projects)} projects, "
                f"{self.expected_events} events expected, latency {sc.latency_ms} ms",
                file=sys.stderr,
                flush=True,
            )
            sim.set_latency(sc.latency_ms)
            base_db = Database(self.db, sc.name + "_base") if self.baseline else None
            with (
                running(Database(self.db, sc.name, self.schema)) as db,
                running(base_db) if base_db else nullcontext() as bdb,
            ):
                asyncio.run(seed(db.url, self.seed_users))
                if bdb is not None:
                    n = sc.baseline_users or len(self.seed_users)
                    asyncio.run(seed(bdb.url, self.seed_users[:n]))
                self._phases(sim, db, bdb)
        return self.report(time.perf_counter() - t_start)

    def _phases(self, sim: Simulator, db: Database, bdb: Database | None) -> None:
        sc = self.sc
        if sc.processes > 1:
            return scale_out_phases(self, sim, db)  # fleet: no baseline (see bench/fleet.py)
        users = sc.users
        if sc.mutate_fraction:
            cold_min = minimum_requests(self.truths, users, None, threads=self.threads)
            with running(Service(sc, db.url, sim.url, self.log_dir)) as svc:
                self.measure_service(sim, svc, db, "setup", cold_min)
            if bdb is not None:
                self.measure_baseline(sim, bdb, "setup", cold_min)
            changed = self.mutate(sim)
            self.truths = self.fetch_truths(sim)  # new comments are expected too
            first = minimum_requests(self.truths, users, changed, threads=self.threads)
        else:
            first = minimum_requests(self.truths, users, None, threads=self.threads)
        idle = minimum_requests(self.truths, users, {}, threads=self.threads)
        with running(Service(sc, db.url, sim.url, self.log_dir)) as svc:
            self.measure_service(sim, svc, db, "cold", first)
            if self.warm:
                for _ in range(int(os.environ.get("BENCH_WARM_REPEAT", "1"))):
                    self.measure_service(sim, svc, db, "warm", idle)
            if self.reconcile:
                self.measure_reconciliation(sim, svc, db, idle)
        if bdb is not None:
            self.measure_baseline(sim, bdb, "cold", first)
            if self.warm:
                self.measure_baseline(sim, bdb, "warm", idle)

    # --- report -----------------------------------------------------------------------------------

    def report(self, total_s: float) -> dict[str, Any]:
        base = {r["phase"]: r for r in self.rows if r["system"] == "baseline"}
        for r in self.rows:
            b = base.get(r["phase"])
            if r["system"] == "service" and b and r["wall_s"] > 0:
                r["speedup_vs_baseline"] = round(b["wall_s"] / r["wall_s"], 1)
        sc = self.sc
        return {
            "scenario": sc.name,
            "description": sc.description,
            "db": self.db,
            "schema": self.schema,
            "parameters": {
                "users": sc.users,
                "projects_per_user": len(self.projects),
                "issues_per_project": sc.issues,
                "mrs_per_project": sc.mrs,
                "notes_per_item_avg": sc.notes,
                "big_project_issues": sc.big_project_issues,
                "latency_ms": sc.latency_ms,
                "poll_concurrency": sc.poll_concurrency,
                "user_concurrency": sc.user_concurrency,
                "max_in_flight": sc.max_in_flight,
                "mutate_fraction": sc.mutate_fraction,
                "setup_latency_ms": sc.setup_latency_ms,
                "processes": sc.processes,
                "expected_events": self.expected_events,
            },
            "runs": self.rows,
            "machine": machine(),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "bench_seconds": round(total_s, 1),
        }


def _per_request_ms(cpu_s: float, requests: int) -> float | None:
    return round(cpu_s * 1000 / requests, 3) if requests else None


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=RESULTS.parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 0))
    return format(v, spec)


def table(result: dict[str, Any]) -> str:
    head = (
        "system   phase    wall s   requests (min)    events    events/s  peak RSS MB  "
        "CPU s  ms/req (svc / sim)   bound s  x bound  x faster  complete  reconcile req"
    )
    lines = [
        f"{result['scenario']} ({result['db']}, {result.get('schema', 'story')} schema): "
        f"{result['description']}; "
        f"L={result['parameters']['latency_ms']} ms, u={result['parameters']['poll_concurrency']}"
        f", c={result['parameters']['user_concurrency']}"
        f", cap={result['parameters'].get('max_in_flight', '-')}",
        head,
        "-" * len(head),
    ]
    for r in result["runs"]:
        part = r.get("extrapolated_from_users")
        note = f"  (scaled up from {part} users)" if part else ""
        lines.append(
            f"{r['system']:8} {r['phase']:6} {r['wall_s']:8.3f} "
            f"{r['requests']:>9} ({r['min_requests']:>6}) {r['events']:>9} "
            f"{_fmt(r['events_per_s'], '>11.0f')} {_fmt(r.get('peak_rss_mb'), '>12.1f')} "
            f"{_fmt(r.get('cpu_s'), '>7.2f')} "
            f"{_fmt(r.get('cpu_ms_per_request'), '>8.3f')} / "
            f"{_fmt(r.get('simulator_cpu_ms_per_request'), '<8.3f')} "
            f"{r['lower_bound_s']:>9.3f} "
            f"{_fmt(r['ratio_to_lower_bound'], '>8.2f')} "
            f"{_fmt(r.get('speedup_vs_baseline'), '>9.1f')}  "
            f"{_fmt(r.get('complete')):8}  {_fmt(r.get('reconcile_requests'), '>13')}{note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("scenario", choices=[*SCENARIOS, "all"])
    ap.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    ap.add_argument(
        "--schema",
        choices=["story", "newest"],
        default="story",
        help="the original app's schema to sync into: story 3.5's (default) or its newest "
        "(work items, threads, people; PostgreSQL only)",
    )
    ap.add_argument("--warm", action="store_true", help="also run the warm poll (see above)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the original algorithm")
    ap.add_argument(
        "--reconcile",
        action="store_true",
        help="after cold (and warm): a poll with every reconciliation due, then a warm one",
    )
    ap.add_argument("--scale", type=float, default=1.0, help="shrink users/items (smoke tests)")
    ap.add_argument("--user-concurrency", type=int, help="GITLAB_USER_CONCURRENCY override")
    ap.add_argument("--poll-concurrency", type=int, help="POLL_CONCURRENCY override")
    ap.add_argument("--max-in-flight", type=int, help="GITLAB_MAX_IN_FLIGHT override")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    ap.add_argument("--tag", default="", help="suffix for the result file (variants)")
    args = ap.parse_args(argv)

    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for name in names:
        sc = SCENARIOS[name]
        if args.scale != 1.0:
            sc = sc.scaled(args.scale)
        if args.user_concurrency:
            sc = _replace(sc, user_concurrency=args.user_concurrency)
        if args.poll_concurrency:
            sc = _replace(sc, poll_concurrency=args.poll_concurrency)
        if args.max_in_flight:
            sc = _replace(sc, max_in_flight=args.max_in_flight)
        with tempfile.TemporaryDirectory(prefix="gi_bench_logs_") as logs:
            try:
                bench = Bench(
                    sc,
                    args.db,
                    args.warm,
                    not args.no_baseline,
                    Path(logs),
                    args.reconcile,
                    args.schema,
                )
                result = bench.run()
            except Exception:
                for f in Path(logs).iterdir():
                    tail = f.read_text(errors="replace")[-3000:]
                    print(f"--- {f.name} (tail)\n{tail}", file=sys.stderr)
                raise
        print(table(result))
        if sc.processes > 1:
            print(fleet_table(result))
        args.out.mkdir(parents=True, exist_ok=True)
        suffix = ("" if args.db == "postgres" else f"-{args.db}") + (
            f"-{args.tag}" if args.tag else ""
        )
        if args.schema != "story":
            suffix += f"-{args.schema}"
        (args.out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _replace(sc: Scenario, **kw: Any) -> Scenario:
    from dataclasses import replace

    return replace(sc, **kw)
