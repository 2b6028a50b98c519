"""Keeps the benchmark harness from rotting: the smallest scenario at a tiny size, on SQLite.

Asserts what the harness checks (every expected event stored, the minimum request count),
never a duration.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("psutil")


def test_bench_typical_tiny(tmp_path, capsys):
    from bench.harness import main

    assert (
        main(
            [
                "typical",
                "--db",
                "sqlite",
                "--scale",
                "0.2",
                "--warm",
                "--reconcile",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "typical-sqlite.json").read_text())
    runs = {(r["system"], r["phase"]): r for r in result["runs"]}
    assert set(runs) == {
        ("service", "cold"),
        ("service", "warm"),
        ("service", "reconcile"),
        ("service", "after"),
        ("baseline", "cold"),
        ("baseline", "warm"),
    }
    for phase in ("cold", "warm", "reconcile", "after"):
        key = ("service", phase)
        run = runs[key]
        assert run["complete"], run
        assert run["requests"] == run["min_requests"], run
        assert run["lower_bound_s"] > 0 and run["peak_rss_mb"] > 0
    # Reconciliation requests are counted apart: only in the reconcile poll, at its minimum.
    reconcile = runs[("service", "reconcile")]
    assert reconcile["reconcile_requests"] == reconcile["reconcile_min_requests"] > 0
    assert reconcile["events_removed"] == 0
    assert runs[("service", "warm")]["reconcile_requests"] == 0
    assert runs[("service", "after")]["reconcile_requests"] == 0
    assert runs[("service", "cold")]["events"] == result["parameters"]["expected_events"]
    assert runs[("baseline", "cold")]["events"] == result["parameters"]["expected_events"]
    assert "wall s" in capsys.readouterr().out
