"""benchmarks/goal_bounds.py: lower bounds no scheduler can beat on a trace, and whether issue
13's maximum-wait and high-priority goals can hold together there (docs/scheduling.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "goal_bounds.py"
HOUR = 3600.0


def bounds(tmp_path: Path, trace: Path, cluster: str, *extra: str) -> dict:
    out = tmp_path / "bounds.json"
    subprocess.run([sys.executable, str(SCRIPT), str(trace), "--cluster", cluster, "--json", str(out), *extra],
                   check=True, timeout=300, capture_output=True, text=True)
    return json.loads(out.read_text())


def simulate(tmp_path: Path, trace: Path, cluster: str, policy: str, *extra: str) -> dict:
    out = tmp_path / f"{policy}.json"
    subprocess.run([sys.executable, "-m", "gpuqueue.simulate", str(trace), "--cluster", cluster,
                    "--policy", policy, "--json", str(out), *extra],
                   check=True, timeout=300, cwd=ROOT / "backend", capture_output=True)
    return json.loads(out.read_text())


@pytest.fixture
def three_jobs(tmp_path: Path) -> Path:
    """One node of 2 GPUs; at time 0 three 2-GPU jobs of an hour each, all high priority:
    whatever the order, the last one starts after two hours."""
    trace = tmp_path / "three.csv"
    trace.write_text("job_id,user,submit_time,duration,gpus,priority\n"
                     + "".join(f"j{i},u{i},0,3600,2,high\n" for i in range(3)))
    return trace


def test_the_bound_on_the_maximum_wait_is_the_exact_one_where_it_is_known(tmp_path: Path, three_jobs: Path) -> None:
    fifo = simulate(tmp_path, three_jobs, "prod=1x2", "fifo")
    assert fifo["max_wait_s"] == pytest.approx(2 * HOUR)
    got = bounds(tmp_path, three_jobs, "prod=1x2", "--slot", "60", "--fifo", str(tmp_path / "fifo.json"))
    # a lower bound (no schedule waits less than 2 h), tight up to the slots' rounding
    assert 2 * HOUR - 3 * 60 <= got["max_wait_lb_s"] <= 2 * HOUR
    # FIFO's high p99 is 2 h, so the goal is 0.4 h for all three (3 jobs: the p99 exempts none):
    # one of them waits 2 h in every schedule, so the goals cannot hold together
    assert got["goal_high_wait_s"] == pytest.approx(0.4 * HOUR)
    assert got["high_jobs_p99_allows"] == 0
    assert got["feasible_every_high_within_goal"] is False
    assert got["high_p99_feasible"] is False
    assert got["high_jobs_over_goal_lb"] > 0


def test_no_simulated_schedule_beats_the_bound_and_coarser_slots_only_weaken_it(tmp_path: Path) -> None:
    trace = tmp_path / "bursty.csv"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_trace.py"), str(trace), "--shape", "bursty",
                    "--seed", "3", "--jobs", "1500", "--days", "2", "--gpus", "64"],
                   check=True, timeout=120, capture_output=True)
    cfg = str(trace.with_suffix(".toml"))
    achieved = {p: simulate(tmp_path, trace, "prod=8x8", p, "--config", cfg) for p in ("gpuqueue", "fifo")}
    fine = bounds(tmp_path, trace, "prod=8x8", "--config", cfg, "--slot", "600", "--fifo", str(tmp_path / "fifo.json"))
    coarse = bounds(tmp_path, trace, "prod=8x8", "--config", cfg, "--slot", "3600", "--fifo", str(tmp_path / "fifo.json"))
    assert fine["jobs"] == achieved["fifo"]["jobs"] - achieved["fifo"]["rejected"] > 1000  # the same jobs
    assert 0 < coarse["max_wait_lb_s"] <= fine["max_wait_lb_s"]
    for policy, figures in achieved.items():
        assert fine["max_wait_lb_s"] <= figures["max_wait_s"], policy
    # the bound is far from trivial at load 1: a backlog builds up whatever the order
    assert fine["max_wait_lb_s"] > 0.2 * achieved["fifo"]["max_wait_s"]
