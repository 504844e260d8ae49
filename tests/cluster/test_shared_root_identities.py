"""The shared root with workers running as root and jobs under their users' own uids: a job
killed with its node resumes on the other node from the root, the copy it gets is its own, and
the root is the workers' only; once its record expires, the worker deletes the job's folders
from its disk, the job user's own ``work/<id>`` included (``--local-sweep``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from helpers.servers import wait_until
from training.jobs import logs

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

STEPS = r'''
import sys, time
import gpuqueue
ck = gpuqueue.Checkpointer(max_checkpoints=2)
point = ck.resume_point()
start = point.step if point else 0
print("resumed from", start, flush=True)
for step in range(start + 1, 41):
    time.sleep(0.1)
    if step % 5 == 0:
        ck.save(step, writer=lambda d: open(d + "/s.txt", "w").write(str(step)))
print("done at", step, flush=True)
'''


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    def setup(c: Cluster) -> None:
        c.worker_args = ["--shared-dir", str(c.root.parent / "shared"), "--local-sweep", "0.5"]
        (c.root / "steps.py").write_text(STEPS)

    with identity_cluster("gq-shared-ids-", {"n1": 1, "n2": 1}, redis_kw={"appendonly": True}, setup=setup,
                          daemon_args=("--keep-finished", "10s")) as c:
        yield c


def test_a_job_under_its_own_uid_resumes_on_the_other_node_from_the_root(cluster: Cluster) -> None:
    c = cluster
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [py, str(c.root / "steps.py")],
                                    "env": {"PYTHONPATH": os.pathsep.join([backend, libs])}})["id"]
    root = c.client("root")

    def copied() -> object:
        j = root.get(job)
        assert j["state"] not in ("failed", "succeeded"), logs(root.events(job))
        return j["state"] == "running" and any("step-000000010" in s for e in root.events(job) if e["type"] == "info"
                                               for s in e["data"].get("shared", [])) and j["attempts"][-1]["node"]

    node = wait_until(copied, 60, 0.1, "step 10 on the root")
    for p in c.tree(f"worker-{node}"):
        try:
            p.kill()
        except psutil.Error:
            pass
    rec = c.wait_done([job], 120)[job]
    out = logs(root.events(job))
    assert rec["state"] == "succeeded", out
    assert [a["outcome"] for a in rec["attempts"]] == ["lost", "succeeded"]
    other = rec["attempts"][-1]["node"]
    assert other != node
    resumed = [int(line.split()[-1]) for line in out.splitlines() if line.startswith("resumed from")]
    assert resumed[0] == 0 and resumed[-1] >= 10, out
    # the copy on the other node is the job's own; the root is root's, closed to others
    got = list((c.root / f"node-{other}" / "work" / job / "checkpoints").rglob("*"))
    assert got and len({os.lstat(p).st_uid for p in got}) == 1 and os.lstat(got[0]).st_uid != 0
    shared = c.root.parent / "shared"
    assert shared.stat().st_mode & 0o777 == 0o700 and shared.stat().st_uid == 0
    # 10 s after its end the record goes, then the surviving node's worker (root) deletes the
    # job's folders: its records and the job user's own work folder
    node_dir = c.root / f"node-{other}"
    wait_until(lambda: not (node_dir / "work" / job).exists() and not (node_dir / "jobs" / job).exists(),
               60, 0.1, "the job's folders swept from the node that ran it last")
    assert c.redis_client().exists(f"gq:job:{job}") == 0
    assert f"deleted from this node the folders of 1 job whose records are gone: {job}" in c.log(f"worker-{other}")
