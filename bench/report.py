"""`python -m bench.report`: the markdown tables of bench/README.md from bench/results/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ORDER = ["typical", "team", "large", "huge-project", "huge-project-notes", "incremental"]


def _f(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(results: list[dict]) -> str:
    out = [
        "| scenario | system | phase | wall s | requests (min) | events | events/s "
        "| peak RSS MB | CPU s (service / sim) | CPU ms per request (service / sim) "
        "| lower bound s | x bound | x faster than baseline |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        name = res["scenario"] + (f" ({res['db']})" if res["db"] != "postgres" else "")
        p = res["parameters"]
        cap = p.get("max_in_flight")
        if p["user_concurrency"] != 32 or p["poll_concurrency"] != 5 or cap not in (None, 40):
            name += f" c={p['user_concurrency']} u={p['poll_concurrency']} cap={cap or '-'}"
        for r in res["runs"]:
            cpu = per_request = "-"
            if r.get("cpu_s") is not None:
                cpu = f"{r['cpu_s']:.2f} / {_f(r.get('simulator_cpu_s'), '.2f')}"
                per_request = (
                    f"{_f(r.get('cpu_ms_per_request'), '.3f')} / "
                    f"{_f(r.get('simulator_cpu_ms_per_request'), '.3f')}"
                )
            system = r["system"]
            if r.get("extrapolated_from_users"):
                system += f" (first {r['extrapolated_from_users']} users, scaled)"
            out.append(
                f"| {name} | {system} | {r['phase']} | {r['wall_s']:.3f} "
                f"| {r['requests']} ({r['min_requests']}) | {r['events']} "
                f"| {_f(r['events_per_s'], '.0f')} | {_f(r.get('peak_rss_mb'), '.1f')} | {cpu} "
                f"| {per_request} "
                f"| {r['lower_bound_s']:.3f} | {_f(r['ratio_to_lower_bound'], '.2f')} "
                f"| {_f(r.get('speedup_vs_baseline'), '.1f')} |"
            )
    return "\n".join(out)


def main() -> int:
    files = sorted(RESULTS.glob("*.json"))
    results = [json.loads(f.read_text()) for f in files]
    results.sort(
        key=lambda r: (
            ORDER.index(r["scenario"]) if r["scenario"] in ORDER else 99,
            r["parameters"]["user_concurrency"],
        )
    )
    print(render(results))
    if results:
        m = results[0]["machine"]
        print(
            f"\nMachine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, "
            f"Python {m['python']}, {m['os']}.",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
