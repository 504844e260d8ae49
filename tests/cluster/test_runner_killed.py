"""A runner killed under its job (the out-of-memory killer, an admin's ``kill -9``, a crash): the
job's processes, those in sessions of their own and double-forked ones included, end within
seconds, the job says what happened, and its next attempt runs normally.

The runner is the subreaper of its job's processes and kills what is left at the job's end, but
a killed runner cannot: its job ran on, as its user, on GPUs the scheduler gave to the next job.
The worker's runner fork server is now a subreaper too, and kills what a dead runner leaves,
with all its descendants at once: even processes that start each other again end."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from helpers.servers import wait_until
from training.jobs import logs

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python

# two heads in sessions of their own, each starting the other again as soon as it is gone
HYDRA = r'''
import os, sys, time
other = int(sys.argv[2])  # argv[1]: the test's mark, which forked heads keep
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while True:
    if not alive(other):
        me = os.getpid()
        pid = os.fork()  # at once, no new interpreter to wait for
        if pid == 0:
            os.setsid()
            other = me
            continue
        other = pid
    time.sleep(0.002)
'''

# attempt 1 leaves processes everywhere and sleeps; a later attempt ends at once
JOB = r'''
import os, subprocess, sys, time
mark, hydra = sys.argv[1], sys.argv[2]
if os.environ["GPUQUEUE_ATTEMPT"] != "1":
    print("attempt", os.environ["GPUQUEUE_ATTEMPT"], "runs normally", flush=True)
    sys.exit(0)
sleep = "import time; time.sleep(300)"
# a child that starts a grandchild in a session of its own
subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                  "subprocess.Popen(sys.argv[2:], start_new_session=True); time.sleep(300)",
                  mark, sys.executable, "-c", sleep, mark])
# a double-forked daemon in a session of its own: an orphan from the start
subprocess.Popen([sys.executable, "-c", "import os, time; os.fork() and os._exit(0); os.setsid(); "
                  "os.fork() and os._exit(0); time.sleep(300)", mark]).wait()
subprocess.Popen([sys.executable, hydra, mark, "0"], start_new_session=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
print("all started", flush=True)
time.sleep(300)
'''


def _marked(mark: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if mark in (p.info["cmdline"] or []):
            out.append(p)
    return out


def _end(mark: str) -> None:
    """Kill what is left of the job (on the code before the fix: everything), heads stopped first."""
    for _ in range(5):
        left = _marked(mark)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for p in left:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
        time.sleep(0.1)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """One node whose worker runs as root, each job under its user's own dynamic uid (the
    worker's own user where the tests do not run as root)."""
    args: tuple[str, ...] = () if os.geteuid() == 0 else ("--identities", "none")
    with identity_cluster("gq-runner-killed-", {"n1": 1}, worker_args=args) as c:
        yield c


def test_a_killed_runners_job_ends_and_runs_again(cluster: Cluster) -> None:
    c = cluster
    py, _ = job_python()
    mark = f"gq-runner-killed-{os.urandom(4).hex()}"
    (c.root / "leaves.py").write_text(JOB)
    (c.root / "hydra.py").write_text(HYDRA)
    alice = c.client("alice")
    job = alice.submit({"kind": "command", "gpus": 1,
                        "command": [py, str(c.root / "leaves.py"), mark, str(c.root / "hydra.py")]})["id"]
    try:
        wait_until(lambda: "all started" in logs(alice.events(job)), 60, 0.1, "the job's processes to start")
        # the main process, its child, the child's setsid'd child, the double-forked one, two heads
        wait_until(lambda: len(_marked(mark)) == 6, 10, 0.05, "six marked processes")
        runner = alice.get(job)["attempts"][-1]["pid"]
        assert runner and runner not in [p.pid for p in _marked(mark)]
        os.kill(runner, signal.SIGKILL)
        t0 = time.monotonic()
        wait_until(lambda: not _marked(mark), 10, 0.02, "the job's processes to end")
        gone_s = time.monotonic() - t0
        assert gone_s < 3, gone_s
        rec = c.wait_done([job], 60)[job]
    finally:
        _end(mark)
    assert rec["state"] == "succeeded", rec
    first, second = rec["attempts"]
    assert first["outcome"] == "lost" and first["node"] == "n1"
    said = first["message"]
    assert "the runner of this attempt on node n1 was killed by SIGKILL" in said, said
    ended = re.search(r"the worker ended the (\d+) processes the job still ran", said)
    assert ended and int(ended.group(1)) >= 6, said
    assert "the queue starts the job again" in said, said
    events = alice.events(job)
    assert said in [e["data"].get("message") for e in events if e["type"] == "warning"]
    assert second["outcome"] == "succeeded"
    assert "attempt 2 runs normally" in logs(events)
    shown = c.cli("alice", "logs", "-f", job, timeout=30)  # what the user reads (the job has ended)
    assert f"[gpuqueue] warning: {said}" in shown.stderr and "attempt 2 runs normally" in shown.stdout, shown
    print(f"\nthe killed runner's {ended.group(1)} processes were gone {gone_s * 1000:.0f} ms after its SIGKILL")


def test_processes_that_start_each_other_again_end_with_the_job(tmp_path: Path) -> None:
    """At the job's normal end the runner killed what the job left a level at a time: two heads
    that start each other again outran it for its whole 10 s, then ran on. It now kills each
    orphan with all its descendants at once."""
    from gpuqueue.cluster.forkserver import ForkServer

    mark = f"gq-hydra-{os.urandom(4).hex()}"
    hydra = tmp_path / "hydra.py"
    hydra.write_text(HYDRA)
    d = tmp_path / "a"
    d.mkdir()
    go = tmp_path / "go"  # the job ends once the test has seen both heads
    code = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], '0'], "
            "start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "while not os.path.exists(sys.argv[3]): time.sleep(0.02)")
    (d / "launch.json").write_text(json.dumps({"argv": [sys.executable, "-c", code, str(hydra), mark, str(go)],
                                               "env": {}, "cwd": str(tmp_path)}))
    fs = ForkServer(dict(os.environ))
    try:
        h = fs.launch(d)
        heads = lambda: [p for p in _marked(mark) if p.info["cmdline"][1:2] == [str(hydra)]]  # noqa: E731
        wait_until(lambda: len(heads()) == 2, 30, 0.02, "both heads")
        go.touch()
        told = time.time()
        wait_until(lambda: h.poll() is not None, 30, 0.02, "the runner to end")
        ended = json.loads((d / "exit.json").read_text())["ended"]
        assert not _marked(mark)
        said = [json.loads(line)["data"].get("line", "") for line in (d / "events.jsonl").read_text().splitlines()]
        assert any(s.startswith("gpuqueue: ended") for s in said), said
        # the runner's end came at once, not after its 10 s of chasing the heads
        assert ended - told < 3, ended - told
    finally:
        _end(mark)
        fs.close()
    fs.proc.wait(10)
