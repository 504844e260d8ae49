"""What all of one user's jobs' checkpoints take on the workers' shared root is bounded
(``max_shared_gb``, ``max_shared_files``), counted in the store across workers: real redis-server (with the shipped
ACL where the worker's own user does it), a real folder root, :meth:`SharedRoot.push` with the
worker's :class:`UserShare` and the worker's :class:`Sweeper`. The end-to-end case with real
processes: ``test_shared_user_bound.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from gpuqueue.cluster.redis_store import RedisStore
from gpuqueue.cluster.shared_root import PushMemo, SharedRoot, UserRefusal
from gpuqueue.cluster.shared_usage import SharedUsage, user_limits
from gpuqueue.cluster.worker_sweep import Sweeper, queue_id
from gpuqueue.queue.config import QueueConfig
from helpers.servers import RedisServer

from .conftest import shipped_acl


def _ckpt(job_dir: Path, name: str, step: int, nbytes: int, empty: int = 0) -> Path:
    """A complete checkpoint: ``state.pt`` of ``nbytes`` bytes and ``empty`` empty files."""
    d = job_dir / "checkpoints" / name / f"step-{step:09d}"
    d.mkdir(parents=True)
    (d / "state.pt").write_bytes(b"w" * nbytes)
    for i in range(empty):
        (d / f"empty-{i}").touch()
    (d / "COMPLETE").write_text(json.dumps({"step": step}))
    return d


def _publish(admin: RedisStore, users: dict[str, dict[str, float]]) -> None:
    """The config the daemon publishes, with these users' limits."""
    cfg = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"n1": 1}}}, "users": users})
    admin.r.set(admin.k("config"), cfg.model_dump_json())


def _on_root(root: Path, job_id: str) -> list[str]:
    return sorted(p.parent.name for p in (root / "jobs" / job_id).glob("checkpoints/*/step-*/COMPLETE"))


@pytest.fixture
def stores(redis_factory: Callable[..., RedisServer]) -> tuple[RedisStore, RedisStore]:
    """The admin's store, and the same as the worker's ACL user of deploy/redis/users.acl."""
    from .test_isolation import PASSWORDS

    server = redis_factory(password=PASSWORDS["admin"],
                           conf=shipped_acl({r: PASSWORDS[r] for r in ("scheduler", "api", "worker")}))
    admin = RedisStore(f"redis://:{PASSWORDS['admin']}@127.0.0.1:{server.port}/0", "gq")
    worker = RedisStore(f"redis://gpuqueue-worker:{PASSWORDS['worker']}@127.0.0.1:{server.port}/0", "gq")
    return admin, worker


def test_a_users_checkpoints_on_the_root_are_bounded_across_jobs_until_the_sweep_deletes_them(
        stores: tuple[RedisStore, RedisStore], tmp_path: Path) -> None:
    admin, worker = stores
    assert user_limits(worker, "alice").max_shared_gb == 1000  # no config published yet: the default
    _publish(admin, {"alice": {"max_shared_gb": 0.000001}})  # 1000 bytes for all of alice's jobs
    assert user_limits(worker, "alice").max_shared_gb == 0.000001 and user_limits(worker, "bob").max_shared_gb == 1000
    root = SharedRoot(str(tmp_path / "root"), queue=queue_id(worker), max_bytes=1000)  # and 1000 an attempt
    usage = SharedUsage(worker)
    node = tmp_path / "node"

    def push(job_id: str, owner: str, memo: PushMemo) -> list[str]:
        return root.push(job_id, node / job_id, memo=memo, quota=usage.for_job(job_id, owner))

    for job_id in ("j-a", "j-b", "j-c", "j-d"):
        admin.r.set(admin.k("job", job_id), "{}")  # the sweep asks only whether the record exists
    a, b, c = PushMemo(), PushMemo(), PushMemo()
    _ckpt(node / "j-a", "t", 1, 550)
    assert push("j-a", "alice", a) == ["t/step-000000001"]
    size = usage.used("alice")
    assert 550 < size < 600
    # alice's second job: within the per-attempt bound, over alice's together: not copied
    _ckpt(node / "j-b", "t", 1, 550)
    assert push("j-b", "alice", b) == [] and _on_root(tmp_path / "root", "j-b") == []
    assert b.user_refusals == [UserRefusal("t/step-000000001", size, 2, size, 2, 1000, 1_000_000, False)]
    assert not b.refusals
    assert usage.used("alice") == size
    # the refusal is told once, not at every later push
    assert push("j-b", "alice", b) == [] and len(b.user_refusals) == 1
    # bob's job: his own count
    _ckpt(node / "j-c", "t", 1, 550)
    assert push("j-c", "bob", c) == ["t/step-000000001"] and usage.used("bob") == size
    # the per-attempt bound still holds first: j-a's second checkpoint of another run is over it
    _ckpt(node / "j-a", "u", 1, 550)
    assert push("j-a", "alice", a) == [] and a.refusals and not a.user_refusals
    shutil.rmtree(node / "j-a" / "checkpoints" / "u")
    # a job at its owner's bound rotating its checkpoints: the one it replaces is not held against it
    shutil.rmtree(node / "j-a" / "checkpoints" / "t" / "step-000000001")
    _ckpt(node / "j-a", "t", 2, 500)
    assert push("j-a", "alice", a) == ["t/step-000000002"]
    assert _on_root(tmp_path / "root", "j-a") == ["step-000000002"] and 500 < usage.used("alice") < size
    # a new attempt of j-a (a fresh memo) finds it on the root: not counted twice
    assert push("j-a", "alice", PushMemo()) == [] and 500 < usage.used("alice") < size
    # j-a's record is deleted and the sweep deletes its folder: alice's usage drops, j-d's is copied
    admin.r.delete(admin.k("job", "j-a"))
    assert Sweeper(worker, root, "w1", 30).sweep() == ["j-a"]
    assert usage.used("alice") == 0 and usage.used("bob") == size
    assert admin.r.keys("gq:shared:job:j-a") == []
    _ckpt(node / "j-d", "t", 1, 550)
    assert push("j-d", "alice", PushMemo()) == ["t/step-000000001"] and usage.used("alice") == size


def test_a_users_checkpoints_on_the_root_are_bounded_in_files_too(stores: tuple[RedisStore, RedisStore],
                                                                   tmp_path: Path) -> None:
    """Empty files count next to nothing in bytes, but each is an inode (or object) of the root:
    ``max_shared_files`` bounds them, across jobs, given back by rotation and by the sweep."""
    admin, worker = stores
    _publish(admin, {"alice": {"max_shared_files": 5}})
    root = SharedRoot(str(tmp_path / "root"), queue=queue_id(worker))
    usage = SharedUsage(worker)
    node = tmp_path / "node"

    def push(job_id: str, memo: PushMemo) -> list[str]:
        return root.push(job_id, node / job_id, memo=memo, quota=usage.for_job(job_id, "alice"))

    for job_id in ("j-a", "j-b"):
        admin.r.set(admin.k("job", job_id), "{}")
    a, b = PushMemo(), PushMemo()
    (_ckpt(node / "j-a", "t", 1, 10, empty=1) / "shards").mkdir()  # state.pt, an empty file, a folder, the marker
    assert push("j-a", a) == ["t/step-000000001"] and usage.files("alice") == 4
    _ckpt(node / "j-b", "t", 1, 10)  # 2 files: 6 of 5
    assert push("j-b", b) == [] and _on_root(tmp_path / "root", "j-b") == []
    [refused] = b.user_refusals
    assert refused.by_files and (refused.files, refused.used_files, refused.limit_files) == (2, 4, 5), refused
    assert usage.files("alice") == 4
    # j-a rotates to a checkpoint of 2 files: the one it replaces is not held against it
    shutil.rmtree(node / "j-a" / "checkpoints" / "t" / "step-000000001")
    _ckpt(node / "j-a", "t", 2, 10)
    assert push("j-a", a) == ["t/step-000000002"] and usage.files("alice") == 2
    # the sweep deletes j-a's folder: its files are given back, j-b's checkpoint fits
    admin.r.delete(admin.k("job", "j-a"))
    assert Sweeper(worker, root, "w1", 30).sweep() == ["j-a"]
    assert usage.files("alice") == 0 and not admin.r.keys("gq:shared:files:*")
    assert push("j-b", PushMemo()) == ["t/step-000000001"] and usage.files("alice") == 2


def test_a_checkpoint_counted_before_files_were_is_given_back_in_bytes(stores: tuple[RedisStore, RedisStore]) -> None:
    """A count written by a worker of the version before (``BYTES``, no files) still leaves whole."""
    admin, worker = stores
    admin.r.hset("gq:shared:job:j-old", mapping={"owner": "alice", "t/step-000000001": "550"})
    admin.r.hset("gq:shared:used:alice", mapping={"j-old": 550, "total": 550})
    usage = SharedUsage(worker)
    share = usage.for_job("j-old", "alice")
    assert share.take("t/step-000000002", 100, 2) is None
    assert (usage.used("alice"), usage.files("alice")) == (650, 2)
    share.give(["t/step-000000001"])
    assert (usage.used("alice"), usage.files("alice")) == (100, 2)
    share.give(["t/step-000000002"])
    assert (usage.used("alice"), usage.files("alice")) == (0, 0) and not admin.r.keys("gq:shared:*")
