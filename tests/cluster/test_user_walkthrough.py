"""A user's walk through cluster mode (README, docs/user-guide.md, docs/training.md), read with
the eyes of someone who never saw the code: what the terminal says when a job waits, when its
node dies under it, and when it resumes on another node from the workers' shared root. Real
redis-server, scheduler daemon, API service and Celery workers declaring GPUs; the `gpuqueue`
command as a user runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import psutil

from helpers.servers import wait_until

from .conftest import PY, TOKENS, Cluster

# attempt 1 saves steps 1 and 2 and waits to be killed with its node; attempt 2 resumes and saves 3
JOB = r'''
import os, time
import gpuqueue
ckpt = gpuqueue.Checkpointer(every_steps=1, max_checkpoints=5)
state = ckpt.load()
if state is None:
    for step in (1, 2):
        ckpt.save(step, {"step": step})
    print("saved 1 and 2", flush=True)
    time.sleep(300)
print("resumed from step", state["step"], flush=True)
ckpt.save(3, {"step": 3})
'''


def _kill_node(c: Cluster, node: str) -> None:
    """kill -9 of the worker's whole process tree (worker, fork server, runners, the job)."""
    for p in c.tree(f"worker-{node}"):
        try:
            p.kill()
        except psutil.Error:
            pass
    c.procs[f"worker-{node}"].wait(15)


def _copied(events: list[dict[str, Any]]) -> list[str]:
    """The checkpoints the job's stream says were copied to the shared root, in order."""
    return [s for e in events if e["type"] == "info" for s in e["data"].get("shared", [])]


def test_a_job_killed_with_its_node_says_why_and_resumes_without_copying_again(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    """A job killed with its node read `[gpuqueue] attempt ended (lost); queued again`, and its
    attempt `the job process vanished without an exit record` (as if the job had done it). It
    says which attempt ended and why, in the cell's words (`gpuqueue logs`, the cell, the widget:
    one function). The next attempt, started with the checkpoints it resumed from, copied them
    to the shared root again at its first save (`checkpoint default/step-1, default/step-2,
    default/step-3 copied`): a big checkpoint's upload twice, and a line that says what did not
    happen. Only the new one is copied now."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, worker_args=("--identities", "none", "--shared-dir", str(shared)))
    script = tmp_path / "train.py"
    script.write_text(JOB)
    alice = c.client("alice")
    job = alice.submit({"kind": "command", "gpus": 1, "command": [PY, str(script)], "name": "resumes"})["id"]

    def on_root() -> Any:
        j = alice.get(job)
        assert j["state"] not in ("succeeded", "failed"), j
        return "default/step-000000002" in _copied(alice.events(job)) and j["attempts"][-1]["node"]

    node = wait_until(on_root, 90, 0.1, "step 2 on the shared root")
    _kill_node(c, node)
    rec = c.wait_done([job], 120)[job]
    assert rec["state"] == "succeeded" and [a["outcome"] for a in rec["attempts"]] == ["lost", "succeeded"], rec

    why = (f"node {node} stopped answering: no heartbeat from its worker for 2s "
           "(a crash, a reboot or a network cut)")
    assert rec["attempts"][0]["message"] == why, rec["attempts"][0]
    out = c.cli("alice", "logs", job)
    assert out.returncode == 0, out.stderr
    assert f"[gpuqueue] attempt 1 ended (lost: {why}); queued again\n" in out.stderr, out.stderr
    assert "resumed from step 2" in out.stdout, out.stdout
    # the paths `%gpuqueue checkpoints` lists are on the disk of the node that saved each
    # (docs/training.md, "Resume as a new job"): the first two on the lost node, step 3 on the other
    paths = [e["data"]["path"] for e in alice.events(job) if e["type"] == "checkpoint"]
    other = rec["attempts"][1]["node"]
    assert [Path(p).is_relative_to(c.root / f"node-{n}") for p, n in zip(paths, (node, node, other))] == [True] * 3, paths
    # attempt 2 copied only what it saved: the two it started with were on the root already
    assert _copied(alice.events(job)) == ["default/step-000000001", "default/step-000000002",
                                          "default/step-000000003"], _copied(alice.events(job))


def test_the_terminal_and_a_text_cell_say_where_a_waiting_job_stands_and_why(
        cluster_factory: Callable[..., Cluster], jupyter_server_factory: Callable[..., Any]) -> None:
    """`gpuqueue ls` gave a waiting job's reason as a code (`#1 resources`, `#2 priority`), where
    `%gpuqueue list` says it in words; `gpuqueue logs [-f]` of a waiting job printed nothing at
    all (a blank terminal: broken, or waiting?); `gpuqueue list`, the notebook's verb, was
    `invalid choice`; a %%train cell shown as text (nbconvert, a console) said `submitted …:
    queued` and nothing more while it waited (the API answers before the scheduler places the
    job). They say it in the notebook's words now."""
    c = cluster_factory(nodes={"n1": 1})
    holder = c.submit("bob", ticks=600)
    wait_until(lambda: c.client("bob").get(holder)["state"] == "running", 60, 0.1, "bob's job to run")
    waits = c.submit("alice", ticks=1, name="waits")
    words = "#1: waiting for 1 GPU in pool 'gpu' (0/1 free)"
    wait_until(lambda: words in str(c.cli("alice", "ls").stdout), 30, 0.2, "the reason in gpuqueue ls")

    for verb in ("ls", "list"):
        ls = c.cli("alice", verb)
        assert ls.returncode == 0, ls.stderr
        [line] = [li for li in ls.stdout.splitlines() if li.startswith(waits)]
        assert line.split()[3] == "queued" and words in line, ls.stdout
    logs = c.cli("alice", "logs", waits)
    assert logs.returncode == 0 and logs.stdout == "", logs
    assert logs.stderr.startswith(f"[gpuqueue] {waits}: queued ({words}"), logs.stderr

    server = jupyter_server_factory(gpus=0, env={"GPUQUEUE_API_URL": c.url, "GPUQUEUE_API_TOKEN": TOKENS["alice"]})
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    cell = k.run("%%train --gpus 1 --name cell-waits\nx = 1", interrupt_after=8, timeout=60)
    [submitted, why] = cell.stdout.splitlines()[:2]
    job = submitted.split()[2]
    assert submitted == f"[gpuqueue] submitted {job} (cell-waits): queued", cell.stdout
    assert why == f"[gpuqueue] {job}: queued (#2: 1 job is ahead of it in pool 'gpu')", cell.stdout
    c.client("root").cancel(holder)

    # an attempt that failed and is retried says which, and why, once
    fails = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 1,
                                      "command": [PY, "-c", "raise SystemExit('lr 10 is too high')"]})["id"]
    c.wait_done([fails], 60)
    err = c.cli("alice", "logs", fails).stderr
    assert "[gpuqueue] attempt 1 ended (failed: the job process exited with code 1: lr 10 is too high); " \
           "will retry\n" in err, err


def test_a_cell_and_logs_f_go_on_through_a_restart_of_the_api_service(
        cluster_factory: Callable[..., Cluster], jupyter_server_factory: Callable[..., Any]) -> None:
    """The user guide: "A dropped connection (server restart, network blip) resumes from the last
    event seen." When the API service restarted (an admin's `systemctl restart`, a crash), a
    waiting %%train cell ended at once with a traceback (`Unavailable: cannot reach the gpuqueue
    API service ...`, in magics.py and client.py) and `gpuqueue logs -f` stopped as if the job
    had ended. Both go on now: every line once, in order, and the cell's results come back."""
    import os
    import subprocess
    import threading
    import time

    c = cluster_factory(nodes={"n1": 1})
    server = jupyter_server_factory(gpus=0, env={"GPUQUEUE_API_URL": c.url, "GPUQUEUE_API_TOKEN": TOKENS["alice"]})
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    seen: list[str] = []
    follower: dict[str, Any] = {}

    def restart_the_api() -> None:
        wait_until(lambda: "tick 3" in "".join(seen), 60, 0.05, "the job's output")
        job = c.client("alice").list()[0]["id"]
        follower["p"] = subprocess.Popen(
            [PY, "-m", "gpuqueue.cli", "logs", "-f", job], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, GPUQUEUE_URL=c.url, GPUQUEUE_TOKEN=TOKENS["alice"]), cwd=c.root)
        time.sleep(1.0)
        c.kill("api")
        time.sleep(3.0)
        c.start_api()

    t = threading.Thread(target=restart_the_api, daemon=True)
    t.start()
    cell = k.run("%%train --gpus 1 --name survives\nimport time\nfor i in range(25):\n"
                 "    print('tick', i, flush=True)\n    time.sleep(0.4)\ndone = 25",
                 timeout=120, on_output=lambda m: seen.append(m["content"].get("text", "")))
    t.join(30)
    assert cell.error is None, cell.error
    ticks = [li for li in cell.stdout.splitlines() if li.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(25)], cell.stdout
    assert "back in the notebook: i, done" in cell.stdout, cell.stdout
    assert k.run("print(done)").stdout.strip() == "25"
    out, err = follower["p"].communicate(timeout=60)
    assert follower["p"].returncode == 0, err
    assert out.splitlines() == [f"tick {i}" for i in range(25)], out
    assert err.rstrip().endswith("[gpuqueue] succeeded"), err


def test_a_job_whose_worker_is_stopped_says_so(cluster_factory: Callable[..., Cluster]) -> None:
    """An admin stops a node's worker (`systemctl stop`: SIGTERM): it stops its jobs, which are
    queued again elsewhere. The user read `attempt ended (lost)` and, in the attempt's record,
    `the job process vanished without an exit record`, though the worker had stopped it and
    written its exit; it says so now."""
    import signal

    c = cluster_factory(nodes={"n1": 1, "n2": 1})
    job = c.submit("alice", ticks=100)
    wait_until(lambda: c.client("alice").get(job)["state"] == "running", 60, 0.1, "the job to run")
    node = c.client("alice").get(job)["attempts"][-1]["node"]
    c.kill(f"worker-{node}", signal.SIGTERM)
    rec = c.wait_done([job], 90)[job]
    assert rec["state"] == "succeeded" and rec["attempts"][0]["outcome"] == "lost", rec
    # the stopping node takes no new job: the second attempt runs on the other node, the first time
    other = "n2" if node == "n1" else "n1"
    assert [a["node"] for a in rec["attempts"]] == [node, other], rec["attempts"]
    why = f"node {node} was stopped (its worker or server shut down) and stopped this job first"
    assert rec["attempts"][0]["message"] == why, rec["attempts"][0]
    err = c.cli("alice", "logs", job).stderr
    assert f"[gpuqueue] attempt 1 ended (lost: {why}); queued again\n" in err, err
