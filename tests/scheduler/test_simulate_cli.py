"""The simulator CLI, run as a subprocess like a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"jobs", "avg_jct_s", "p50_jct_s", "p99_jct_s", "avg_wait_s", "p99_wait_s", "max_wait_s",
        "wait_by_priority", "utilization", "jain_fairness", "preemptions", "wasted_gpu_hours", "sim_wall_s"}


def run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "backend"))
    return subprocess.run([sys.executable, "-m", "gpuqueue.simulate", *args], capture_output=True, text=True, env=env, timeout=120)


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "t.csv"
    p.write_text(text)
    return str(p)


GOOD = """job_id,user,submit_time,duration,gpus,priority,pool,preemptible,time_limit
a,u1,0,100,2,high,prod,false,
b,u2,5,300,8,low,prod,true,600
c,u1,6,50,1,,,,
d,u3,7,60,1,medium,dev,false,
"""


def test_json_keys_and_both_policies(tmp_path):
    trace = write(tmp_path, GOOD)
    for policy in ("gpuqueue", "fifo"):
        out = tmp_path / f"{policy}.json"
        r = run(trace, "--cluster", "prod=2x8,dev=1x1", "--policy", policy, "--json", str(out), "--plot", str(tmp_path / "p.png"))
        assert r.returncode == 0, r.stderr
        d = json.loads(out.read_text())
        assert KEYS <= set(d)
        assert set(d["wait_by_priority"]) == {"high", "medium", "low"}
        assert set(d["wait_by_priority"]["high"]) >= {"avg", "p99", "max"}
        assert d["jobs"] == 4 and d["completed"] == 4
        assert (tmp_path / "p.png").stat().st_size > 1000


def test_bad_rows_name_the_line(tmp_path):
    cases = {
        "a,u1,0,100,2\nb,u1,x,100,1\n": "line 3",
        "a,u1,0,100,2\nb,u1,1,-5,1\n": "line 3",
        "a,u1,0,100,2,urgent\n": "line 2",
        "a,u1,0,100,1\na,u1,0,100,1\n": "line 3",
        "a,u1,0,100\n": "line 2",
    }
    for body, where in cases.items():
        header = "job_id,user,submit_time,duration,gpus" + (",priority" if "urgent" in body else "") + "\n"
        r = run(write(tmp_path, header + body), "--cluster", "prod=1x8")
        assert r.returncode == 2, (body, r.stdout, r.stderr)
        assert where in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_bad_header_and_cluster(tmp_path):
    r = run(write(tmp_path, "id,user\n"), "--cluster", "prod=1x8")
    assert r.returncode == 2 and "line 1" in r.stderr
    r = run(write(tmp_path, GOOD), "--cluster", "prod=eight")
    assert r.returncode == 2 and "--cluster" in r.stderr and "Traceback" not in r.stderr


def test_deterministic(tmp_path):
    trace = write(tmp_path, GOOD)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.json"
        assert run(trace, "--cluster", "prod=1x8,dev=1x1", "--json", str(out)).returncode == 0
        d = json.loads(out.read_text())
        d.pop("sim_wall_s")
        outs.append(d)
    assert outs[0] == outs[1]
