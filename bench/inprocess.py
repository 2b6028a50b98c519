"""One scenario's polls run in this process (`run_poll`), the simulator in its own: process
CPU per poll without the service's HTTP layer, GC time, and when the GitLab requests of a
poll were answered. For measuring one step against another (run both, alternating) and
for profilers that attach to this process (py-spy record --pid).

    python -m bench.inprocess team --warm 8
    python -m bench.inprocess team --schema newest --warm 3
    python -m bench.inprocess typical --timeline --user-concurrency 40

Like `python -m bench`, it needs BENCH_PG_URL (a role allowed to create databases); the
database is dropped afterwards. The service's own start-up (`warm_up`: mapper
configuration, pooled connections, the collector's tuning) runs before the first poll, on
uvloop as `serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.harness import Bench
from bench.measure import seed
from bench.procs import Database, Simulator, running
from bench.scenarios import SCENARIOS, Scenario


class _GCTimer:
    """Time spent in the collector (gc.callbacks), reset per poll."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start
            self.collections += 1

    def reset(self) -> None:
        self.seconds, self.collections = 0.0, 0


async def _polls(args: argparse.Namespace, sc: Scenario, sim: Simulator, db: Database) -> None:
    from app.logging import configure_logging
    from app.runtime import open_runtime, warm_up
    from app.settings import load_settings
    from app.sync.poller import run_poll

    settings = load_settings(
        database_url=db.url,
        gitlab_instance_url=sim.url,
        poll_concurrency=sc.poll_concurrency,
        gitlab_user_concurrency=args.user_concurrency or sc.user_concurrency,
        gitlab_max_in_flight=sc.max_in_flight,
        log_level="WARNING",
    )
    configure_logging(settings)
    timer = _GCTimer()
    async with open_runtime(settings) as runtime:
        await warm_up(runtime)
        for phase in ["cold"] + ["warm"] * args.warm:
            sim.clear_requests()
            timer.reset()
            started = time.time()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            summary = (await run_poll(runtime.sync)).summary
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            requests = sim.requests()
            print(
                f"{phase}: cpu {cpu:.3f} s, wall {wall:.3f} s, {len(requests)} requests "
                f"({1000 * cpu / max(len(requests), 1):.3f} ms of CPU each), "
                f"processed {summary.processed}, failed {summary.failed}, "
                f"stored {summary.events.stored}, updated {summary.events.updated}, "
                f"GC {1000 * timer.seconds:.1f} ms in {timer.collections} collections",
                flush=True,
            )
            if args.timeline:
                kinds: dict[str, list[float]] = {}
                for r in requests:
                    kinds.setdefault(r["kind"], []).append(1000 * (r["time"] - started))
                for kind, at in sorted(kinds.items()):
                    print(f"  {kind}: {len(at)} answered {min(at):.0f}-{max(at):.0f} ms")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    ap.add_argument("scenario", choices=list(SCENARIOS))
    ap.add_argument("--schema", choices=["story", "newest"], default="story")
    ap.add_argument("--warm", type=int, default=3, help="warm polls after the cold one")
    ap.add_argument("--user-concurrency", type=int, help="GITLAB_USER_CONCURRENCY override")
    ap.add_argument("--timeline", action="store_true", help="when each kind was answered")
    args = ap.parse_args(argv)
    sc = SCENARIOS[args.scenario]
    with tempfile.TemporaryDirectory(prefix="gi_bench_logs_") as logs:
        bench = Bench(sc, "postgres", True, False, Path(logs), schema=args.schema)
        with running(Simulator(sc, Path(logs))) as sim:
            bench.prepare_world(sim)
            sim.set_latency(sc.latency_ms)
            with running(Database("postgres", sc.name, args.schema)) as db:
                asyncio.run(seed(db.url, bench.seed_users))
                uvloop.run(_polls(args, sc, sim, db))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
