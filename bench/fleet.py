"""The scale-out phases (`fleet`): a setup sync, then the warm poll on 1 process and the same
poll split into shards over N processes on one database, fired concurrently.

Each row gives users per second and the projection to one 10-minute cycle, the service CPU
per user and how busy the process was (CPU seconds / wall seconds: near 1.0 means one core
is saturated, CPU-bound; well below 1.0 means the process waits on GitLab, latency-bound).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from bench.measure import analyse_log, minimum_requests
from bench.procs import Database, Service, Simulator, running

if TYPE_CHECKING:
    from bench.harness import Bench

CYCLE_S = 600  # the 10-minute schedule


def scale_out_phases(bench: Bench, sim: Simulator, db: Database) -> None:
    sc = bench.sc
    first = minimum_requests(bench.truths, sc.users, None)
    idle = minimum_requests(bench.truths, sc.users, {})
    with running(Service(sc, db.url, sim.url, bench.log_dir)) as svc:
        if sc.setup_latency_ms is not None:
            # The cold sync only builds the warm state: run it at a lower latency to keep the
            # bench short; the measured polls run at the scenario's latency.
            sim.set_latency(sc.setup_latency_ms)
        _annotate(bench.measure_service(sim, svc, db, "setup", first), 1)
        sim.set_latency(sc.latency_ms)
        _annotate(bench.measure_service(sim, svc, db, "warm", idle), 1)
    measure_sharded(bench, sim, db, sc.processes, idle)


def _annotate(row: dict[str, Any], processes: int) -> None:
    users = row.get("users_processed") or 0
    wall = row["wall_s"]
    row["processes"] = processes
    row["users_per_s"] = round(users / wall, 1) if wall else None
    row["users_per_cycle"] = round(users / wall * CYCLE_S) if wall else None
    if row.get("cpu_s") is not None and users:
        row["cpu_ms_per_user"] = round(row["cpu_s"] * 1000 / users, 2)
        row["cpu_busy"] = round(row["cpu_s"] / wall, 2)  # 1.0 = one core saturated


def measure_sharded(bench: Bench, sim: Simulator, db: Database, n: int, minimum: int) -> None:
    """The warm poll as N shards on N fresh service processes, fired at the same moment."""
    with ExitStack() as stack:
        svcs = [
            stack.enter_context(running(Service(bench.sc, db.url, sim.url, bench.log_dir)))
            for _ in range(n)
        ]
        sim.clear_requests()
        sim_cpu0 = sim.cpu_seconds()
        cpu0 = [s.cpu_seconds() for s in svcs]
        t0 = time.perf_counter()

        def one(k: int) -> tuple[dict[str, Any], float]:
            summary = svcs[k].poll({"shard": k, "shards": n})
            return summary, time.perf_counter() - t0

        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        cpus = [s.cpu_seconds() - c for s, c in zip(svcs, cpu0, strict=True)]
    stats = analyse_log(sim.requests())
    per_process = []
    for k, ((summary, w), cpu) in enumerate(zip(outcomes, cpus, strict=True)):
        part = {"wall_s": round(w, 3), "cpu_s": round(cpu, 2)}
        part["users_processed"] = summary["processed"]
        _annotate(part, 1)
        per_process.append({"shard": k, **part, "users_failed": summary["failed"]})
    row = bench._row("service", "warm", wall, stats, 0, minimum)
    row.update(
        cpu_s=round(sum(cpus), 2),
        simulator_cpu_s=round(sim.cpu_seconds() - sim_cpu0, 2),
        users_processed=sum(p["users_processed"] for p in per_process),
        users_failed=sum(p["users_failed"] for p in per_process),
        per_process=per_process,
        peak_rss_mb=None,
    )
    _annotate(row, n)
    row["cpu_busy"] = round(row["cpu_s"] / wall / n, 2)  # per process
    bench.rows.append(row)
    for p in per_process:
        print(
            f"  shard {p['shard']}/{n}: {p['wall_s']:.1f} s, {p['users_processed']} users, "
            f"{p['users_per_s']} users/s, {p['cpu_s']} CPU s",
            file=sys.stderr,
            flush=True,
        )
    bench._print_progress(row)


def fleet_table(result: dict[str, Any]) -> str:
    """Users per second and per 10-minute cycle, for each process count."""
    lines = [
        "processes  phase  wall s  users  users/s  users/cycle  CPU ms/user  CPU busy  "
        "bound s  x bound",
    ]
    for r in result["runs"]:
        if "processes" not in r:
            continue
        lines.append(
            f"{r['processes']:>9}  {r['phase']:5} {r['wall_s']:7.1f} {r['users_processed']:6} "
            f"{r['users_per_s']:8} {r['users_per_cycle']:12} "
            f"{r.get('cpu_ms_per_user', '-'):>12} {r.get('cpu_busy', '-'):>9} "
            f"{r['lower_bound_s']:8.1f} {r['ratio_to_lower_bound'] or '-':>8}"
        )
        for p in r.get("per_process", []):
            lines.append(
                f"  shard {p['shard']}: {p['wall_s']:.1f} s, {p['users_processed']} users, "
                f"{p['users_per_s']} users/s ({p['users_per_cycle']}/cycle), "
                f"{p.get('cpu_ms_per_user')} CPU ms/user, CPU busy {p.get('cpu_busy')}"
            )
    return "\n".join(lines)
