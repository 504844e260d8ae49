"""What a job is told when its checkpoints cannot be copied to or from the workers' shared root
(``--shared-dir``): what failed (which checkpoint, which way, the system error), never the root's
location or layout, which are the system's; the worker's log keeps the full paths for the admin.
Real redis-server, scheduler, API and Celery worker, jobs saving with ``gpuqueue.Checkpointer``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from helpers.servers import wait_until

from .conftest import PY, Cluster

JOB = r'''
import os, shutil, sys, time
import gpuqueue
go, way = sys.argv[1], sys.argv[2]
if int(os.environ["GPUQUEUE_ATTEMPT"]) == 1:
    if way == "to":  # the root is broken before the save
        while not os.path.exists(go):
            time.sleep(0.1)
    gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + "/w.txt", "w").write("weights"))
    while not os.path.exists(go):
        time.sleep(0.1)
    time.sleep(0.5)
    if way == "from":  # the next attempt must copy it back from the root
        shutil.rmtree(os.environ["GPUQUEUE_JOB_DIR"] + "/checkpoints")
    sys.exit(1)
print("attempt", os.environ["GPUQUEUE_ATTEMPT"], flush=True)
'''


def _said(c: Cluster, job_id: str) -> list[str]:
    """Everything the user reads of the job: its record's errors and messages, its events."""
    rec = c.client("alice").get(job_id)
    out = [rec.get("error") or ""] + [a.get("message") or "" for a in rec["attempts"]]
    return out + [str(e["data"]) for e in c.client("alice").events(job_id)]


def _cluster(cluster_factory: Callable[..., Cluster], tmp_path: Path) -> tuple[Cluster, Path]:
    shared = tmp_path / "shared-root-of-the-admin"
    shared.mkdir(mode=0o700)
    return cluster_factory({"n1": 1}, worker_args=("--identities", "none", "--shared-dir", str(shared))), shared


def test_a_failed_copy_back_names_the_checkpoint_not_the_roots_path(cluster_factory: Callable[..., Cluster],
                                                                    tmp_path: Path) -> None:
    c, shared = _cluster(cluster_factory, tmp_path)
    go = tmp_path / "go-from"
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 1,
                                    "command": [PY, "-c", JOB, str(go), "from"]})["id"]
    wait_until(lambda: any(e["data"].get("shared") for e in c.client("alice").events(job)), 60, 0.1,
               "the checkpoint on the root")
    step = next((shared / "jobs" / job / "checkpoints").glob("*/step-*"))
    os.symlink("/nonexistent/weights", step / "broken")  # the copy back to the node fails on it
    go.touch()
    rec: dict[str, Any] = c.wait_done([job], 60)[job]
    assert rec["state"] == "failed" and len(rec["attempts"]) == 2, rec
    err = rec["error"]
    assert f"cannot copy checkpoint {step.parent.name}/{step.name} from the shared root to this node" in err, err
    assert "No such file or directory" in err, err
    said = "\n".join(_said(c, job))
    assert str(shared) not in said, said
    assert str(step) in c.log("worker-n1")  # the admin's side


def test_a_failed_copy_to_the_root_names_the_checkpoint_not_the_roots_path(cluster_factory: Callable[..., Cluster],
                                                                           tmp_path: Path) -> None:
    c, shared = _cluster(cluster_factory, tmp_path)
    go = tmp_path / "go-to"
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 0,
                                    "command": [PY, "-c", JOB, str(go), "to"]})["id"]
    wait_until(lambda: c.client("alice").get(job)["state"] == "running", 60, 0.1, "the job running")
    (shared / "jobs").mkdir(exist_ok=True)
    (shared / "jobs" / job).write_text("a file where the job's folder goes")
    go.touch()
    rec = c.wait_done([job], 60)[job]
    assert rec["state"] == "failed", rec
    assert "cannot copy checkpoint" in rec["error"] and "to the shared root" in rec["error"], rec["error"]
    said = "\n".join(_said(c, job))
    assert "trying again at the next save" in said or "cannot be resumed" in said, said
    assert str(shared) not in said, said
    assert str(shared / "jobs" / job) in c.log("worker-n1")


BIG = r'''
import os, sys, time
import gpuqueue
ck = gpuqueue.Checkpointer(max_checkpoints=None)
ck.save(1, writer=lambda d: open(d + "/w.txt", "wb").write(b"w" * 200_000))
def sparse(d):
    with open(d + "/huge.bin", "wb") as f:  # 50 MB that take no disk here
        f.truncate(50_000_000)
ck.save(2, writer=sparse)
ck.save(3, writer=lambda d: open(d + "/w.txt", "wb").write(b"w" * 200_000))
print("saved", flush=True)
'''


def test_checkpoints_past_the_roots_bound_stay_on_the_node_and_the_job_is_told(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    c = cluster_factory({"n1": 1}, worker_args=("--identities", "none", "--shared-dir", str(shared),
                                                "--shared-max-gb", "0.001"))  # 1 MB per attempt
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", BIG]})["id"]
    rec = c.wait_done([job], 60)[job]
    assert rec["state"] == "succeeded", rec
    evs = c.client("alice").events(job)
    told = [e["data"] for e in evs if e["type"] == "warning" and e["data"].get("storage_limit")]
    assert [t["checkpoint"] for t in told] == ["default/step-000000002"], told
    msg = told[0]["message"]
    assert "checkpoint default/step-000000002 (50 MB) is not copied to the shared root" in msg, msg
    assert "--shared-max-gb" in msg and "stays on node n1 only" in msg, msg
    on_root = sorted(p.name for p in (shared / "jobs" / job / "checkpoints" / "default").glob("step-*"))
    assert on_root == ["step-000000001", "step-000000003"], on_root
    used = sum(p.stat().st_blocks * 512 for p in shared.rglob("*") if p.is_file())
    assert used < 2_000_000, used
