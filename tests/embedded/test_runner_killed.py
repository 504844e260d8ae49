"""Embedded mode: a runner killed under its job (the out-of-memory killer, an admin's ``kill -9``,
a crash). The Jupyter server starts each runner in a session of its own and is no subreaper, so
the job's processes, those in sessions of their own and double-forked ones included, were
re-parented to init and ran on, while the queue marked the attempt lost and started attempt 2
beside them. Each runner now runs under a guard (``gpuqueue.attempt.guard``) that ends them
before the attempt is settled, and the attempt says so."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from helpers.servers import wait_until
from training.jobs import logs

# attempt 1 leaves processes in sessions of their own and sleeps; a later attempt ends at once
JOB = r'''
import os, subprocess, sys, time
mark = sys.argv[1]
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
print("all started", flush=True)
time.sleep(300)
'''


def _marked(mark: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if mark in (p.info["cmdline"] or [])]


def _named(p: psutil.Process, name: str) -> bool:
    try:
        return p.name() == name
    except psutil.Error:
        return False


def _end(mark: str) -> None:
    """Kill what is left of the job (on the code before the fix: all of it)."""
    for p in _marked(mark):
        try:
            p.kill()
        except psutil.Error:
            pass


@pytest.mark.parametrize("victim", ["runner", "guard", "runner, server down", "runner, server restarted"])
def test_a_killed_runners_job_ends_before_its_next_attempt(jupyter_server, tmp_path, victim) -> None:
    """SIGKILL of the runner (or of its guard, the attempt's pid; or of the runner while the
    Jupyter server is down, or after it restarted and re-adopted the attempt): within seconds
    none of the job's processes runs, the lost attempt says what happened, and attempt 2
    succeeds, started only after attempt 1's processes were gone."""
    client = jupyter_server.client()
    mark = f"gq-embedded-killed-{os.urandom(4).hex()}"
    script = tmp_path / "leaves.py"
    script.write_text(JOB)
    job = client.submit({"kind": "command", "gpus": 1, "command": [sys.executable, str(script), mark]})["id"]
    try:
        wait_until(lambda: "all started" in logs(client.events(job)), 60, 0.1, "the job's processes to start")
        # the main process, its child, the child's setsid'd child, the double-forked one
        wait_until(lambda: len(_marked(mark)) == 4, 10, 0.05, "four marked processes")
        pid = client.get(job)["attempts"][-1]["pid"]  # the process the server started
        assert pid and pid not in [p.pid for p in _marked(mark)]
        assert _named(psutil.Process(pid), "gpuqueue-guard")  # what an admin sees in ps -o comm, top
        if victim == "runner, server down":
            jupyter_server.stop()
        elif victim == "runner, server restarted":
            jupyter_server.restart()
            client = jupyter_server.client()
            assert client.get(job)["state"] == "running" and len(_marked(mark)) == 4
        if victim.startswith("runner"):  # the guard's child (on the code before the fix: the attempt's pid itself)
            target = next((p.pid for p in psutil.Process(pid).children() if _named(p, "gpuqueue-runner")), pid)
        else:
            target = pid
        os.kill(target, signal.SIGKILL)
        t0 = time.monotonic()
        wait_until(lambda: not _marked(mark), 10, 0.02, "the job's processes to end")
        gone_s = time.monotonic() - t0
        if victim == "runner, server down":
            jupyter_server.start()
            client = jupyter_server.client()
        done = wait_until(lambda: (j := client.get(job))["state"] in ("succeeded", "failed") and j, 60, 0.2,
                          "the job to end")
    finally:
        _end(mark)
    assert gone_s < 3, gone_s
    assert done["state"] == "succeeded", done
    first, second = done["attempts"]
    assert first["outcome"] == "lost" and second["outcome"] == "succeeded", done
    said = first["message"]
    if victim.startswith("runner"):
        assert "the runner of this attempt on node" in said and "was killed by SIGKILL" in said, said
        ended = re.search(r"the runner's guard ended the (\d+) processes the job still ran", said)
        assert ended and int(ended.group(1)) >= 4, said
    else:
        assert "the guard of this attempt's runner" in said and "the runner ended the job at once" in said, said
    assert "the queue starts the job again" in said, said
    # attempt 2 started only after attempt 1's processes were gone
    assert second["started_at"] >= first["ended_at"], done
    env = dict(os.environ, GPUQUEUE_URL=jupyter_server.url, GPUQUEUE_TOKEN=jupyter_server.token)
    shown = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "show", job], env=env, capture_output=True,
                           text=True, timeout=60)
    assert said.split(";")[0] in shown.stdout, shown
    logged = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "logs", "-f", job], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"[gpuqueue] warning: {said.split(';')[0]}" in logged.stderr, logged  # in the job's stream, where the user looks
    print(f"\nkilled the {victim}: the job's processes were gone {gone_s * 1000:.0f} ms after its SIGKILL")
