"""benchmarks/scheduler_throughput.py prints what docs/scheduling.md quotes from it: both
policies, their ratio, and with ``--breakdown`` where a gpuqueue step goes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_prints_both_policies_the_ratio_and_the_breakdown() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scheduler_throughput.py"), "--pending", "300",
         "--users", "30", "--gpus", "64", "--passes", "60", "--breakdown"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    policies = {r["policy"]: r for r in lines if "policy" in r}
    assert set(policies) == {"gpuqueue", "fifo"}
    for r in policies.values():
        assert r["passes"] == 60 and r["decisions"] > 0 and r["decisions_per_s"] > 0
    ratio = next(r for r in lines if "ratio_decisions_per_s" in r)
    assert ratio["ratio_decisions_per_s"] > 0
    parts = next(r for r in lines if "breakdown_share" in r)
    shares = parts["breakdown_share"]
    # the step's parts, each timed exclusive of the others: they add up to the whole
    assert {"submit", "finished", "tick", "scan_users", "start"} <= set(shares)
    assert abs(sum(shares.values()) - 1.0) < 0.01
    assert all(v >= 0 for v in parts["breakdown_us_per_step"].values())
