"""A finished job's folder leaves its node's disk when its record leaves the store, and not
before. Real redis-server, scheduler (``--keep-finished 4s``), API and two Celery workers that
sweep their own ``--state-dir`` every half second (``--local-sweep 0.5``; 10 minutes by default).
A running job's folder stays, as do the workers' other folders (``home/``) and a job folder
written before folders were tagged. The sweep itself, links planted by a job and the race with
a launch: ``test_local_sweep.py``."""

from __future__ import annotations

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


def test_a_finished_jobs_node_folder_leaves_with_its_record(cluster_factory, tmp_path: Path) -> None:
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, start=False, daemon_args=("--keep-finished", "4s"),
                        worker_args=("--identities", "none", "--local-sweep", "0.5"))
    states = [c.root / f"node-{n}" for n in c.nodes]
    for s in states:  # what a worker of an older version left, and a HOME: not the sweep's
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
    folder = c.root / f"node-{done['attempts'][-1]['node']}" / "jobs" / short
    assert (folder / "checkpoints" / "default" / "step-000000001" / "COMPLETE").exists()
    r = c.redis_client()
    assert (folder / "QUEUE").read_text() == r.get("gq:shared:queue")

    # while its record is kept (the user may still requeue it from its checkpoints) the folder
    # stays; then the daemon deletes the record and the worker the folder
    def gone() -> bool:
        there = folder.exists()
        record = r.exists(f"gq:job:{short}")
        assert there or not record, "the folder went while the job's record was kept"
        return not there

    wait_until(gone, 30, 0.05, "the finished job's folder swept from its node")
    assert r.exists(f"gq:job:{short}") == 0
    time.sleep(1.5)  # more sweeps
    assert alice.get(live)["state"] == "running"
    lnode = c.root / f"node-{alice.get(live)['attempts'][-1]['node']}"
    assert (lnode / "jobs" / live / "checkpoints" / "default" / "step-000000001" / "COMPLETE").exists()
    for s in states:
        assert (s / "jobs" / "j-0123456789ab" / "checkpoints").is_dir()
        assert (s / "home" / "61184" / ".cache").read_text() == "c"
    logs = c.log("worker-n1") + c.log("worker-n2")
    assert f"deleted from this node the folders of 1 jobs whose records are gone: {short}" in logs
    assert "carry no queue tag" in logs and "j-0123456789ab" in logs
    alice.cancel(live)
    c.wait_done([live], 60)
