"""One user's jobs cannot fill the workers' shared root for everybody: what all their
checkpoints take there is bounded (``max_shared_gb`` in the queue config, and their files by
``max_shared_files``), across jobs and workers, besides each attempt's ``--shared-max-gb``. Real redis-server, scheduler
(``--keep-finished 2s``), API and Celery worker with a folder ``--shared-dir`` swept every half
second, jobs saving with ``gpuqueue.Checkpointer``. The accounting itself:
``test_shared_usage.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from helpers.servers import wait_until

from .conftest import PY, Cluster

SAVE = r'''
import os, sys, time
import gpuqueue
gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + "/w.bin", "wb").write(b"w" * 600_000))
print("saved", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
'''


def _told(c: Cluster, user: str, job_id: str) -> list[dict[str, Any]]:
    """The job's warnings and infos about the shared root."""
    return [e["data"] for e in c.client(user).events(job_id)
            if e["type"] in ("warning", "info") and (e["data"].get("shared") or e["data"].get("storage_limit"))]


def test_a_users_jobs_together_stay_within_max_shared_gb_and_files_and_the_sweep_gives_the_room_back(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    c = cluster_factory({"n1": 4}, config_extra="[users.alice]\nmax_shared_gb = 0.001\n"  # 1 MB for all hers
                        "[users.bob]\nmax_shared_files = 1\n",  # a checkpoint is its file and its marker
                        daemon_args=("--keep-finished", "2s"),
                        worker_args=("--identities", "none", "--shared-dir", str(shared),
                                     "--shared-max-gb", "0.001",  # and 1 MB an attempt
                                     "--shared-sweep", "0.5"))
    r = c.redis_client()
    wait_until(lambda: r.exists("gq:config"), 30, 0.1, "the scheduler's config")

    def submit(user: str, go: Path) -> str:
        return c.client(user).submit({"kind": "command", "gpus": 1, "retries": 0,
                                      "command": [PY, "-c", SAVE, str(go)]})["id"]

    def copied(user: str, job_id: str) -> bool:
        return any(t.get("shared") for t in _told(c, user, job_id))

    def on_root(job_id: str) -> list[str]:
        return sorted(p.parent.name for p in (shared / "jobs" / job_id).glob("checkpoints/*/step-*/COMPLETE"))

    first = submit("alice", tmp_path / "go-first")
    wait_until(lambda: copied("alice", first), 60, 0.1, "alice's first checkpoint on the root")
    second, bobs = submit("alice", tmp_path / "go-second"), submit("bob", tmp_path / "go-bob")
    wait_until(lambda: _told(c, "alice", second), 60, 0.1, "what alice's second job is told")
    told = _told(c, "alice", second)
    assert len(told) == 1 and told[0]["storage_limit"] and told[0]["checkpoint"] == "default/step-000000001", told
    msg = told[0]["message"]
    assert "checkpoint default/step-000000001 (0.6 MB) is not copied to the shared root" in msg, msg
    assert "your jobs' checkpoints there take 0.6 MB of your 1 MB (max_shared_gb in the queue config)" in msg, msg
    assert "stays on node n1 only" in msg and "--shared-max-gb" not in msg, msg
    assert "delete those you no longer need with `gpuqueue rm JOB_ID ...`" in msg, msg
    assert on_root(second) == []
    # bob's own counts (none of alice's bytes), and his bound in files: his checkpoint (a file and
    # its marker) is over it
    wait_until(lambda: _told(c, "bob", bobs), 60, 0.1, "what bob's job is told")
    [told] = _told(c, "bob", bobs)
    assert told["user_limit"] and told["files"] == 2, told
    msg = told["message"]
    assert ("checkpoint default/step-000000001 (2 files and folders, its marker included) is not copied to the "
            "shared root: your jobs' checkpoints there hold 0 of your 1 (max_shared_files in the queue config)") in msg, msg
    assert "save each checkpoint in fewer, larger files" in msg and "a larger max_shared_files" in msg, msg
    assert on_root(bobs) == [] and not r.exists("gq:shared:files:bob")

    # the first job ends, its record is deleted (--keep-finished), the sweep deletes its folder:
    # alice has room again
    (tmp_path / "go-first").touch()
    wait_until(lambda: not (shared / "jobs" / first).exists(), 60, 0.1, "the first job's folder swept")
    wait_until(lambda: not r.hvals("gq:shared:used:alice"), 10, 0.1, "alice's count given back")
    assert not r.exists("gq:shared:files:alice")
    third = submit("alice", tmp_path / "go-third")
    wait_until(lambda: copied("alice", third), 60, 0.1, "alice's third checkpoint on the root")
    assert on_root(third) == ["step-000000001"]
    assert not [t for t in _told(c, "alice", third) if t.get("storage_limit")]
    for go in ("go-second", "go-bob", "go-third"):
        (tmp_path / go).touch()
