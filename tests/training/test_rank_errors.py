"""What a user sees when a command job, or one rank of a multi-rank job, fails: which rank, its
exit (code or signal, in words) and the line of its stderr that says why, in the job's error
(`gpuqueue show`, `%gpuqueue status`) and in the launcher's last line; not only 'exited with
code 1'. Real Jupyter server, real CLI, real torchrun (gloo on CPU)."""

from __future__ import annotations

import re

import json
import os
import subprocess
import sys

from training.jobs import logs, wait_done
from training.test_distributed import kill_job_groups


def gq(server, *args: str) -> subprocess.CompletedProcess:
    """The real `gpuqueue` command line against ``server``."""
    env = dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token)
    return subprocess.run([sys.executable, "-m", "gpuqueue.cli", *args], env=env, capture_output=True,
                          text=True, timeout=120, cwd=server.work_dir)


FAILS = r"""
import sys
for i in range(20):
    print(f"noise {i}", file=sys.stderr, flush=True)
print("loading the data", file=sys.stderr, flush=True)
def train(lr):
    raise ValueError(f"lr {lr} is too high \x1b]52;c;Zm9v\x07")
train(10)
"""
TAIL = ["noise 17", "noise 18", "noise 19", "loading the data", "Traceback (most recent call last):",
        '  File "<string>", line 8, in <module>', '  File "<string>", line 7, in train']


def test_a_failing_command_job_says_its_exception_in_show_and_status(jupyter_server) -> None:
    """`gpuqueue submit -- python train.py` that raises: `gpuqueue show` and `%gpuqueue status`
    give the exit code and the traceback's exception line (its control characters escaped), and
    the attempt's message its last 8 lines on stderr. One killed by SIGKILL says so in words."""
    bad = gq(jupyter_server, "submit", "--gpus", "1", "--retries", "0", "--", sys.executable, "-c", FAILS).stdout.strip()
    killed = gq(jupyter_server, "submit", "--gpus", "1", "--retries", "0", "--", sys.executable, "-c",
                "import os; print('allocating', flush=True); os.kill(os.getpid(), 9)").stdout.strip()
    assert gq(jupyter_server, "wait", bad).returncode == 1
    assert gq(jupyter_server, "wait", killed).returncode == 1
    job = json.loads(gq(jupyter_server, "show", bad).stdout)
    want = "the job process exited with code 1: ValueError: lr 10 is too high \\x1b]52;c;Zm9v\\x07"
    assert (job["state"], job["error"]) == ("failed", want), job
    message = job["attempts"][-1]["message"]
    assert message.splitlines() == [want, "last lines on stderr:", *TAIL, want.split(": ", 1)[1]], message
    assert "\x1b" not in message and "\x07" not in message, message
    exit_record = json.loads((jupyter_server.state_dir / "jobs" / bad / "attempt-1" / "exit.json").read_text())
    assert exit_record["stderr_tail"][:-1] == TAIL and len(exit_record["stderr_tail"]) == 8, exit_record
    job = json.loads(gq(jupyter_server, "show", killed).stdout)
    assert job["error"] == ("the job process was killed by signal 9 (SIGKILL), e.g. the kernel's out-of-memory "
                            "killer"), job["error"]
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    status = k.run(f"%gpuqueue status {bad}")
    assert re.fullmatch(re.escape(f"{bad}: failed on local (GPU 0), ran ") + r"\d+s" + re.escape(f" - {want}"),
                        status.stdout.strip()), status.text


RANK_0_FAILS = """
import os, sys, time
if os.environ["RANK"] == "0":
    print("rank 0 loads", file=sys.stderr, flush=True)
    time.sleep(1)
    raise KeyError("no such column: 'label'")
time.sleep(60)
"""


def test_a_command_job_whose_rank_0_fails_names_it_and_its_exception(jupyter_server) -> None:
    """A 2-rank command job under torchrun whose rank 0 (unmarked, its stderr as a single
    process's) raises: the job's error and the launcher's last line name rank 0, its exception
    line and exit code (before: `rank 0 failed: exit code 1`), `gpuqueue show` its last lines."""
    c = jupyter_server.client()
    job = c.submit({"kind": "command", "command": [sys.executable, "-c", RANK_0_FAILS], "gpus": 2,
                    "retries": 0, "env": {"GPUQUEUE_LAUNCHER": "torchrun"}}, new=True)["id"]
    try:
        rec = wait_done(jupyter_server, job, 120)
    finally:
        kill_job_groups(jupyter_server, job)
    text = logs(c.events(job))
    want = "rank 0 failed: KeyError: \"no such column: 'label'\" (exit code 1)"
    assert (rec["state"], rec["error"]) == ("failed", want), (rec["error"], text)
    lines = text.splitlines()
    assert "rank 0 loads" in lines and "KeyError: \"no such column: 'label'\"" in lines, text
    assert lines[-1] == f"gpuqueue: {want}; the other ranks were stopped", text
    shown = json.loads(gq(jupyter_server, "show", job).stdout)["attempts"][-1]["message"]
    assert shown.startswith("rank 0 failed:\nlast lines on stderr:\nrank 0 loads\nTraceback"), shown


def test_a_cell_whose_rank_1_is_killed_by_sigkill_says_so_in_words(jupyter_server) -> None:
    """Rank 1 of a `%%train --gpus 2` cell is killed by SIGKILL (as the kernel's out-of-memory
    killer does): the cell's error, `%gpuqueue status` and the launcher's line say it was killed
    by signal 9 (SIGKILL) and what commonly sends it, with the last line it wrote on stderr."""
    k = jupyter_server.start_kernel()
    k.run("%load_ext jupyter_gpuqueue")
    res = k.run(
        "%%train --gpus 2\nimport os, sys, time\nif os.environ['RANK'] == '1':\n"
        "    print('allocating 80 GB', file=sys.stderr, flush=True)\n    time.sleep(1)\n"
        "    os.kill(os.getpid(), 9)\ntime.sleep(30)\n", timeout=180)
    want = ("rank 1 failed: killed by signal 9 (SIGKILL), e.g. the kernel's out-of-memory killer; its last line "
            "on stderr: allocating 80 GB")
    assert res.error is not None and res.error["ename"] == "RemoteJobError", res.text
    [job] = jupyter_server.client().list()
    assert res.error["evalue"] == f"job {job['id']} failed: {want}", res.error
    shown = [line.rsplit("\r", 1)[-1] for line in res.stderr.splitlines()]
    assert "[rank1] allocating 80 GB" in shown, res.stderr
    assert f"gpuqueue: {want}; the other ranks were stopped" in shown, res.stderr
    status = k.run(f"%gpuqueue status {job['id']}")
    assert re.fullmatch(re.escape(f"{job['id']}: failed on local (GPUs 0, 1), ran ") + r"\d+s" + re.escape(f" - {want}"),
                        status.stdout.strip()), status.text
