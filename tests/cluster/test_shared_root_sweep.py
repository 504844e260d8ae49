"""The shared root's cleanup and listing economy, on real parts in this process: a real
redis-server holding job records, a real folder root (and an ``s3://`` root of a moto server),
the worker's :class:`Sweeper` and :meth:`SharedRoot.push`. The sweep deletes the folder of a job
of this queue whose record is gone, and nothing else: not a live job's, not another queue's
sharing the root, not an untagged one; a push lists the root only when the job's local set of
complete checkpoints changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.cluster.shared_root import PushMemo, SharedRoot
from gpuqueue.cluster.worker_sweep import Sweeper, queue_id
from helpers.servers import RedisServer

from . import probe_fs
from .conftest import s3fs_options, shipped_acl


def _ckpt(job_dir: Path, name: str, step: int) -> Path:
    d = job_dir / "checkpoints" / name / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(b"w" * 100)
    (d / "COMPLETE").write_text(json.dumps({"step": step}))
    return d


def _record(store: RedisStore, job_id: str) -> None:
    store.r.set(store.k("job", job_id), "{}")  # the sweep asks only whether the record exists


def _calls(path: Path, job_id: str) -> list[str]:
    """The listings of ``job_id``'s folder the probe file system saw."""
    if not path.exists():
        return []
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.split()[0] != "write" and job_id in ln]


def test_a_push_lists_the_root_only_when_the_local_checkpoints_changed(tmp_path: Path) -> None:
    probe_fs.register()
    calls = tmp_path / "calls.txt"
    root = SharedRoot(f"probefile://{tmp_path / 'root'}", {"calls": str(calls)}, queue="q1")
    job = tmp_path / "node" / "job"
    job.mkdir(parents=True)
    memo = PushMemo()
    # a job with no checkpoint yet: its pushes touch nothing remote
    assert root.push("j-1", job, memo=memo) == [] and root.push("j-1", job, memo=memo) == []
    assert not calls.exists() or calls.read_text() == ""
    first = _ckpt(job, "t", 10)
    assert root.push("j-1", job, memo=memo) == ["t/step-000000010"]
    assert _calls(calls, "j-1") == ["glob"]  # rotation mirrored once
    writes = calls.read_text().count("write ")
    for _ in range(5):  # checkpoint events with nothing new locally (e.g. a save elsewhere)
        assert root.push("j-1", job, memo=memo) == []
    assert _calls(calls, "j-1") == ["glob"] and calls.read_text().count("write ") == writes
    # a new save, then the old one rotated away locally: each changes the set, each is mirrored
    _ckpt(job, "t", 20)
    assert root.push("j-1", job, memo=memo) == ["t/step-000000020"]
    import shutil

    shutil.rmtree(first)
    assert root.push("j-1", job, memo=memo) == []
    assert _calls(calls, "j-1") == ["glob", "glob", "glob"]
    on_root = sorted(p.name for p in (tmp_path / "root" / "jobs" / "j-1" / "checkpoints" / "t").iterdir())
    assert on_root == ["step-000000020"]
    assert (tmp_path / "root" / "jobs" / "j-1" / "QUEUE").read_text() == "q1"
    # a new attempt (a fresh memo) lists once again, whatever its predecessor did; the checkpoint
    # the root holds already (the same marker) is not copied again
    assert root.push("j-1", job, memo=PushMemo()) == []
    assert _calls(calls, "j-1")[-1] == "glob" and len(_calls(calls, "j-1")) == 4


@pytest.fixture
def store(redis_factory: Callable[..., RedisServer]) -> RedisStore:
    return RedisStore(redis_factory().url, "gq")


def _sweep_case(store: RedisStore, root: SharedRoot, other: SharedRoot, untagged: SharedRoot,
                tmp_path: Path) -> None:
    """``root`` is this queue's; ``other`` another queue's on the same storage; ``untagged`` a
    worker that wrote no tag (before tags existed)."""
    root.queue = queue_id(store)
    assert queue_id(store) == root.queue  # drawn once, kept
    node = tmp_path / "node"
    for job_id, where in (("j-live", root), ("j-finished", root), ("j-expired", root), ("j-deleted", root),
                          ("j-other", other), ("j-legacy", untagged)):
        _ckpt(node / job_id, "t", 5)
        assert where.push(job_id, node / job_id) == ["t/step-000000005"]
    for job_id in ("j-live", "j-finished"):
        _record(store, job_id)
    assert sorted(root.job_ids()) == ["j-deleted", "j-expired", "j-finished", "j-legacy", "j-live", "j-other"]
    sweeper = Sweeper(store, root, "w1", interval_s=30)
    assert sorted(sweeper.sweep() or []) == ["j-deleted", "j-expired"]
    assert sorted(root.job_ids()) == ["j-finished", "j-legacy", "j-live", "j-other"]
    back = tmp_path / "back"
    back.mkdir()
    assert root.pull("j-finished", back) == ["t/step-000000005"]  # a finished job's, while its record is kept
    # one sweep per interval for the whole queue: another worker's turn comes after it
    assert Sweeper(store, root, "w2", interval_s=30).sweep() is None
    # the daemon deletes j-finished's record (--keep-finished): the next sweep deletes its folder
    store.r.delete(store.k("job", "j-finished"))
    store.r.delete(store.k("shared", "sweep"))
    assert sweeper.sweep() == ["j-finished"]
    assert sorted(root.job_ids()) == ["j-legacy", "j-live", "j-other"]
    # the other queue's and the untagged folder are intact
    for job_id in ("j-other", "j-legacy"):
        (tmp_path / f"check-{job_id}").mkdir()
        assert root.pull(job_id, tmp_path / f"check-{job_id}") == ["t/step-000000005"]
    assert other.queue_of("j-other") == "another-queue" and root.queue_of("j-legacy") is None


def test_the_sweep_deletes_this_queues_folders_whose_records_are_gone_and_nothing_else(
        store: RedisStore, tmp_path: Path) -> None:
    url = str(tmp_path / "root")
    _sweep_case(store, SharedRoot(url), SharedRoot(url, queue="another-queue"), SharedRoot(url), tmp_path)
    jobs = tmp_path / "root" / "jobs"
    assert sorted(p.name for p in jobs.iterdir()) == ["j-legacy", "j-live", "j-other"]
    assert (jobs / "j-other" / "checkpoints" / "t" / "step-000000005" / "COMPLETE").exists()
    assert (jobs / "j-legacy" / "checkpoints" / "t" / "step-000000005" / "COMPLETE").exists()


def test_the_sweep_on_an_s3_root(store: RedisStore, tmp_path: Path, moto_s3: dict[str, str]) -> None:
    url, opts = "s3://ckpts/gq", s3fs_options(moto_s3)
    _sweep_case(store, SharedRoot(url, opts), SharedRoot(url, opts, queue="another-queue"),
                SharedRoot(url, opts), tmp_path)
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.invalidate_cache()
    left = sorted({p.split("/")[3] for p in fs.find("ckpts/gq/jobs")})
    assert left == ["j-legacy", "j-live", "j-other"]


def test_the_workers_redis_user_may_sweep(redis_factory: Callable[..., RedisServer], tmp_path: Path) -> None:
    """The shipped ACL (deploy/redis/users.acl) lets a worker draw the queue id, take the sweep
    turn and ask whether job records exist, and nothing more than before."""
    from .test_isolation import PASSWORDS

    server = redis_factory(password=PASSWORDS["admin"], conf=shipped_acl({r: PASSWORDS[r] for r in ("scheduler", "api", "worker")}))
    admin = RedisStore(f"redis://:{PASSWORDS['admin']}@127.0.0.1:{server.port}/0", "gq")
    worker = RedisStore(f"redis://gpuqueue-worker:{PASSWORDS['worker']}@127.0.0.1:{server.port}/0", "gq")
    root = SharedRoot(str(tmp_path / "root"), queue=queue_id(worker))
    assert admin.r.get("gq:shared:queue") == root.queue
    for job_id in ("j-kept", "j-gone"):
        _ckpt(tmp_path / job_id, "t", 1)
        root.push(job_id, tmp_path / job_id)
    _record(admin, "j-kept")
    assert Sweeper(worker, root, "w1", 30).sweep() == ["j-gone"]
    import redis

    with pytest.raises(redis.exceptions.NoPermissionError):
        worker.r.set("gq:job:j-kept", "{}")


def test_a_store_that_lost_its_data_since_the_worker_started_sweeps_nothing(store: RedisStore, tmp_path: Path) -> None:
    """Every record is gone, and so is the queue id the worker drew at start: the sweep is
    skipped (the folders are left for the admin), not run against an empty store."""
    root = SharedRoot(str(tmp_path / "root"), queue=queue_id(store))
    _ckpt(tmp_path / "j-1", "t", 1)
    root.push("j-1", tmp_path / "j-1")
    _record(store, "j-1")
    sweeper = Sweeper(store, root, "w1", 30)
    assert sweeper.sweep() == []
    store.r.flushall()
    assert sweeper.sweep() == []
    assert root.job_ids() == ["j-1"]
