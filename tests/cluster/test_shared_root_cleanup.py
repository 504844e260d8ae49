"""A finished job's checkpoints leave the shared root, and its folder leaves the node that ran
it, when its record leaves the store, and not before. Real redis-server, scheduler
(``--keep-finished 4s``), API and two Celery workers with a folder ``--shared-dir`` that sweep it
and their own ``--state-dir`` every half second (``--shared-sweep 0.5 --local-sweep 0.5``; 10
minutes by default). The root also holds a folder of another queue sharing it and an untagged one
written before folders were tagged, and each node an untagged job folder and a HOME: all stay,
as do a running job's folders. The node sweep itself, links planted by a job and the race with a
launch: ``test_local_sweep.py``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from helpers.servers import wait_until

PY = sys.executable

SAVE = r'''
import sys, time, gpuqueue
gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + "/s.txt", "w").write("1"))
print("saved", flush=True)
time.sleep(float(sys.argv[1]))
'''


def _ckpt(folder: Path) -> Path:
    d = folder / "checkpoints" / "default" / "step-000000001"
    d.mkdir(parents=True)
    (d / "s.txt").write_text("1")
    (d / "COMPLETE").write_text(json.dumps({"step": 1}))
    return d / "COMPLETE"


def test_a_finished_jobs_checkpoints_leave_the_root_with_its_record(cluster_factory, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    jobs = shared / "jobs"
    jobs.mkdir(parents=True)
    shared.chmod(0o700)
    other = _ckpt(jobs / "j-0123456789ab")  # another queue's job (its own store or prefix)
    (jobs / "j-0123456789ab" / "QUEUE").write_text("another-queue")
    legacy = _ckpt(jobs / "j-ba9876543210")  # written before folders were tagged
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, start=False, daemon_args=("--keep-finished", "4s"),
                        worker_args=("--identities", "none", "--shared-dir", str(shared), "--shared-sweep", "0.5",
                                     "--local-sweep", "0.5"))
    states = [c.root / f"node-{n}" for n in c.nodes]
    for s in states:  # what a worker of an older version left on the node, and a HOME: not the sweep's
        (s / "jobs" / "j-0123456789ab" / "checkpoints").mkdir(parents=True)
        (s / "home" / "61184").mkdir(parents=True)
        (s / "home" / "61184" / ".cache").write_text("c")
    c.start()
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    alice = c.client("alice")

    def submit(sleep: float) -> str:
        return alice.submit({"kind": "command", "gpus": 1, "command": [PY, str(script), str(sleep)]})["id"]

    live, short = submit(300), submit(0)
    done = c.wait_done([short], 60)[short]
    assert done["state"] == "succeeded"
    folder = jobs / short
    local = c.root / f"node-{done['attempts'][-1]['node']}" / "jobs" / short
    r = c.redis_client()
    for f in (folder, local):
        assert (f / "checkpoints" / "default" / "step-000000001" / "COMPLETE").exists()
        assert (f / "QUEUE").read_text() == r.get("gq:shared:queue")

    # while its record is kept (and the user may requeue it from its checkpoints) the folders
    # stay; then the daemon deletes the record, a worker the root's folder, its node its own
    def gone() -> bool:
        there = folder.exists() or local.exists()
        record = r.exists(f"gq:job:{short}")
        assert there or not record, "a folder went while the job's record was kept"
        return not there

    wait_until(gone, 30, 0.05, "the finished job's folders swept from the root and its node")
    assert r.exists(f"gq:job:{short}") == 0
    assert short not in [j["id"] for j in alice.list()]  # the user no longer has the job, nor its checkpoints
    # the running job's, the other queue's and the untagged folder stay
    time.sleep(1.5)  # three more sweeps
    assert alice.get(live)["state"] == "running"
    assert (jobs / live / "checkpoints" / "default" / "step-000000001" / "COMPLETE").exists()
    assert other.exists() and legacy.exists()
    assert sorted(p.name for p in jobs.iterdir()) == sorted([live, "j-0123456789ab", "j-ba9876543210"])
    lnode = c.root / f"node-{alice.get(live)['attempts'][-1]['node']}"
    assert (lnode / "jobs" / live / "checkpoints" / "default" / "step-000000001" / "COMPLETE").exists()
    for s in states:
        assert (s / "jobs" / "j-0123456789ab" / "checkpoints").is_dir()
        assert (s / "home" / "61184" / ".cache").read_text() == "c"
    logs = c.log("worker-n1") + c.log("worker-n2")
    assert f"deleted from the shared root the checkpoints of 1 job whose records are gone: {short}" in logs
    assert f"deleted from this node the folders of 1 job whose records are gone: {short}" in logs
    assert "carry no queue tag" in logs and "j-0123456789ab" in logs
    alice.cancel(live)
    c.wait_done([live], 60)
