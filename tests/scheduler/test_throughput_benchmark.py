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


def test_digest_is_a_hash_of_the_decisions_the_same_run_after_run() -> None:
    """``--digest`` prints a hash of every decision of a run: equal for two runs of one seed (so
    two versions of the code can be compared in one line), different for another seed."""
    def digests(seed: int) -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "scheduler_throughput.py"), "--pending", "300",
             "--users", "30", "--gpus", "64", "--passes", "60", "--runs", "2", "--digest",
             "--seed", str(seed)],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout
        runs = [json.loads(line) for line in out.splitlines()]
        found: dict[str, set[str]] = {}
        for r in runs:
            if "policy" in r:
                found.setdefault(r["policy"], set()).add(r["digest"])
        assert all(len(d) == 1 for d in found.values()), found  # run 1 and run 2 agree
        return {p: d.pop() for p, d in found.items()}

    one, two = digests(1), digests(2)
    assert set(one) == {"gpuqueue", "fifo"}
    assert one["gpuqueue"] != two["gpuqueue"] and one["fifo"] != two["fifo"]
