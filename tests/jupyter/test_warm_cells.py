"""A server starts no warm interpreter before its user's first job. After that, a %%train cell
in a real kernel of a real server, after a pause, runs in the interpreter the
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
    """A job interpreter this server's warm runner (under its guard) started is waiting, its imports done (asleep,
    its CPU time no longer growing)."""
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if b"gpuqueue.job.warmstart" not in (p / "cmdline").read_bytes():
                continue
            runner = (p / "stat").read_text().rsplit(")", 1)[1].split()[1]
            guard = Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[1]  # gpuqueue.attempt.guard
            if Path(f"/proc/{guard}/stat").read_text().rsplit(")", 1)[1].split()[1] != str(server_pid):
                continue
            cpu = lambda: sum(map(int, (p / "stat").read_text().rsplit(")", 1)[1].split()[11:13]))  # noqa: E731
            before = cpu()
            time.sleep(1.0)
            return cpu() == before
        except (OSError, IndexError):
            continue
    return False


def _runners(server_pid: int) -> list[str]:
    """The queue runners this server started that are still there."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"gpuqueue.attempt.runner" in (p / "cmdline").read_bytes() \
                    and (p / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(server_pid):
                out.append(p.name)
        except (OSError, IndexError):
            continue
    return out


def test_a_cell_after_a_pause_runs_warm_and_brings_its_names_back(jupyter_server) -> None:
    k = jupyter_server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    time.sleep(3.0)  # several scheduling passes: a server whose user never submitted warms nothing
    assert not _waiting_interpreter(jupyter_server.proc.pid) and not _runners(jupyter_server.proc.pid)
    first = k.run("%%train --gpus 0\nwarmup = 1", timeout=180)  # the first job starts cold
    assert first.error is None, first.text
    wait_until(lambda: _waiting_interpreter(jupyter_server.proc.pid), 60, what="a job interpreter started ahead")
    res = k.run(CELL, timeout=180)
    assert res.error is None, res.text
    assert "sum 30.0" in res.stdout and "back in the notebook" in res.stdout
    check = k.run("import torch\nprint(t.tolist(), info[0], info[1] == __import__('os').getcwd(), info[2] == torch.get_num_threads())")
    assert check.error is None, check.error
    assert check.stdout.split("] ", 1)[1].split() == ["0", "True", "True"]
    job = jupyter_server.client().list()[0]  # newest first
    assert job["state"] == "succeeded"
    assert _runner_record(jupyter_server.state_dir, job["id"])["warm"] is True


def test_an_idle_server_sleeps(jupyter_server) -> None:
    """With no job, a real server's queue does not poll: it woke 95 times a second before (the
    event-file tail loop's 10 ms), now about once; and it runs no runner or interpreter ahead."""
    import psutil

    server = psutil.Process(jupyter_server.proc.pid)
    time.sleep(2.0)
    before = server.num_ctx_switches().voluntary
    time.sleep(3.0)
    per_s = (server.num_ctx_switches().voluntary - before) / 3.0
    assert per_s < 20, f"the idle server woke up {per_s:.0f} times a second"
    assert server.children() == []
