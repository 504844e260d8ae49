"""Replay one trace under the gpuqueue policy and under FIFO; print the issue's table.

    python benchmarks/sim_compare.py ../shared/traces/openb.csv --cluster prod=16x8 --time-scale 8

Runs ``python -m gpuqueue.simulate`` twice (as a user would) and prints a Markdown table of
the figures the scheduler is judged on, with the ratio and the goal for each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def simulate(trace: str, policy: str, extra: list[str]) -> dict:
    """One simulator run; returns its JSON."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "backend"))
        r = subprocess.run([sys.executable, "-m", "gpuqueue.simulate", trace, "--policy", policy,
                            "--json", str(out), *extra], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr.strip())
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--time-scale", default="1")
    ap.add_argument("--config")
    a = ap.parse_args()
    extra = ["--cluster", a.cluster, "--time-scale", a.time_scale] + (["--config", a.config] if a.config else [])
    g, f = simulate(a.trace, "gpuqueue", extra), simulate(a.trace, "fifo", extra)
    hp = lambda d: d["wait_by_priority"]["high"]["p99"]  # noqa: E731
    rows = [
        ("avg JCT (s)", g["avg_jct_s"], f["avg_jct_s"], "≤ 0.6×", g["avg_jct_s"] <= 0.6 * f["avg_jct_s"]),
        ("max wait (s)", g["max_wait_s"], f["max_wait_s"], "≤ 1×", g["max_wait_s"] <= f["max_wait_s"]),
        ("high p99 wait (s)", hp(g), hp(f), "≤ 0.2×", hp(g) <= 0.2 * hp(f)),
        ("utilization while a queued job fits", g["utilization_while_fits"], f["utilization_while_fits"], "≥ 0.95", g["utilization_while_fits"] >= 0.95),
        ("utilization while anything is queued", g["utilization_while_queued"], f["utilization_while_queued"], "", None),
        (f"Jain among backlogged users ({g['jain_users']})", g["jain_fairness"], f["jain_fairness"], "≥ 0.95", g["jain_fairness"] >= 0.95),
        ("preemptions", g["preemptions"], f["preemptions"], "", None),
        ("simulation wall time (s)", g["sim_wall_s"], f["sim_wall_s"], "", None),
    ]
    print(f"{Path(a.trace).name}, {g['jobs']} jobs, --cluster {a.cluster} --time-scale {a.time_scale}\n")
    print("| metric | gpuqueue | fifo | ratio | goal |")
    print("| --- | --- | --- | --- | --- |")
    for name, x, y, goal, ok in rows:
        ratio = f"{x / y:.3f}" if isinstance(y, (int, float)) and y and "×" in goal else ""
        fmt = (lambda v: f"{v:,.0f}") if max(abs(x), abs(y)) >= 100 else (lambda v: f"{v:.3f}")
        mark = "" if ok is None else (" ✔" if ok else " ✘")
        print(f"| {name} | {fmt(x)} | {fmt(y)} | {ratio} | {goal}{mark} |")


if __name__ == "__main__":
    main()
