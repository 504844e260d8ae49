"""A %%train cell in a real kernel of a real server, after a pause, runs in the interpreter the
queue started ahead with torch imported: the user sees the same output and names back, and
the job sees its own GPUs, folder and torch threads."""

from __future__ import annotations

import json
import time
from pathlib import Path

from helpers.servers import wait_until

CELL = """%%train --gpus 1
import os, torch
t = torch.arange(6.0).reshape(2, 3) * 2
info = (os.environ["CUDA_VISIBLE_DEVICES"], os.getcwd(), torch.get_num_threads())
print("sum", float(t.sum()))
"""


def _runner_record(state_dir: Path, job_id: str) -> dict:
    for line in (state_dir / "jobs" / job_id / "attempt-1" / "events.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["type"] == "runner":
            return rec["data"]
    raise AssertionError("no runner record")


def _waiting_interpreter(server_pid: int) -> bool:
    """A job interpreter this server's warm runner started is waiting, its imports done (asleep,
    its CPU time no longer growing)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if b"gpuqueue.job.warmstart" not in (p / "cmdline").read_bytes():
                continue
            runner = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[1] != str(server_pid):
                continue
            cpu = lambda: sum(map(int, (p / "stat").read_text().rsplit(")", 1)[1].split()[11:13]))  # noqa: E731
            before = cpu()
            time.sleep(1.0)
            return cpu() == before
        except (OSError, IndexError):
            continue
    return False


def test_a_cell_after_a_pause_runs_warm_and_brings_its_names_back(jupyter_server) -> None:
    """A fresh server starts nothing ahead (a user who never submits pays for no interpreter
    with torch imported); once it has had a job, the next cell after a pause runs warm."""
    k = jupyter_server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    time.sleep(3.0)  # a few scheduling passes
    assert not _waiting_interpreter(jupyter_server.proc.pid)
    first = k.run("%%train --gpus 0\nfirst = 1", timeout=180)
    assert first.error is None and "back in the notebook" in first.stdout, first.text
    [cold] = jupyter_server.client().list()
    assert _runner_record(jupyter_server.state_dir, cold["id"])["warm"] is False
    wait_until(lambda: _waiting_interpreter(jupyter_server.proc.pid), 60, what="a job interpreter started ahead")
    res = k.run(CELL, timeout=180)
    assert res.error is None, res.text
    assert "sum 30.0" in res.stdout and "back in the notebook" in res.stdout
    check = k.run("import torch\nprint(t.tolist(), info[0], info[1] == __import__('os').getcwd(), info[2] == torch.get_num_threads())")
    assert check.error is None, check.error
    assert check.stdout.split("] ", 1)[1].split() == ["0", "True", "True"]
    job = next(j for j in jupyter_server.client().list() if j["id"] != cold["id"])
    assert job["state"] == "succeeded"
    assert _runner_record(jupyter_server.state_dir, job["id"])["warm"] is True


def test_an_idle_server_sleeps(jupyter_server) -> None:
    """With no job, the queue neither polls (it woke 95 times a second before: the event-file
    tail loop's 10 ms) nor runs a runner or interpreter ahead of time."""
    import psutil

    server = psutil.Process(jupyter_server.proc.pid)
    time.sleep(2.0)
    before = server.num_ctx_switches().voluntary
    time.sleep(3.0)
    per_s = (server.num_ctx_switches().voluntary - before) / 3.0
    assert per_s < 20, f"the idle server woke up {per_s:.0f} times a second"
    assert server.children() == []
