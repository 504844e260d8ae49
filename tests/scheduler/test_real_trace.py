"""The policy against FIFO on the real production trace in ../shared/traces (Alibaba 2023),
replayed at high load: the issue's goals, which it meets, must stay met."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRACE = ROOT.parent / "shared" / "traces" / "openb.csv"


def simulate(policy: str, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "gpuqueue.simulate", str(TRACE), "--cluster", "prod=16x8", "--time-scale", "8",
         "--policy", policy, "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


@pytest.mark.skipif(not TRACE.exists(), reason="the shared trace folder is not beside this checkout")
def test_gpuqueue_beats_fifo_on_the_real_trace(tmp_path):
    gq = simulate("gpuqueue", tmp_path / "gq.json")
    fifo = simulate("fifo", tmp_path / "fifo.json")
    assert gq["jobs"] == fifo["jobs"] == 6203
    assert gq["avg_jct_s"] <= 0.6 * fifo["avg_jct_s"]
    assert gq["max_wait_s"] <= fifo["max_wait_s"]
    assert gq["wait_by_priority"]["high"]["p99"] <= 0.2 * fifo["wait_by_priority"]["high"]["p99"]
    assert gq["utilization_while_queued"] > fifo["utilization_while_queued"]
    assert gq["utilization_while_fits"] >= 0.95  # busy while some queued job fits on free GPUs
    assert gq["jain_fairness"] >= 0.95 and gq["jain_users"] == 16
