"""What the worker copies between a job's local folder and the shared root, on real folders:
complete checkpoints only, marker last, rotation mirrored, and, for a job running under its own
uid, nothing that is a link or not the job's own file is ever copied to the root, and what comes
back is the job's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpuqueue.cluster.shared_root import SharedRoot, StorageError, load_options

UID = 61999


def _ckpt(job_dir: Path, name: str, step: int, data: bytes = b"weights", complete: bool = True) -> Path:
    d = job_dir / "checkpoints" / name / f"step-{step:09d}"
    (d / "sub").mkdir(parents=True)
    (d / "state.pt").write_bytes(data)
    (d / "sub" / "opt.bin").write_bytes(data[::-1])
    if complete:
        (d / "COMPLETE").write_text(json.dumps({"step": step}))
    return d


def test_push_copies_complete_checkpoints_and_mirrors_rotation_pull_brings_them_back(tmp_path: Path) -> None:
    root = SharedRoot(str(tmp_path / "root"))
    root.check()
    a = tmp_path / "node-a" / "job"
    first = _ckpt(a, "trainer-0", 10)
    _ckpt(a, "trainer-0", 20, complete=False)  # a save in progress: not copied
    assert root.push("j1", a) == ["trainer-0/step-000000010"]
    on_root = tmp_path / "root" / "jobs" / "j1" / "checkpoints" / "trainer-0"
    assert sorted(p.name for p in on_root.iterdir()) == ["step-000000010"]
    assert (on_root / "step-000000010" / "sub" / "opt.bin").read_bytes() == b"sthgiew"
    # the job rotates step 10 away after saving step 30: the root follows
    import shutil

    shutil.rmtree(first)
    _ckpt(a, "trainer-0", 30, b"newer")
    root.push("j1", a)
    assert sorted(p.name for p in on_root.iterdir()) == ["step-000000030"]
    # another node's fresh folder gets the complete ones
    b = tmp_path / "node-b" / "job"
    b.mkdir(parents=True)
    assert root.pull("j1", b) == ["trainer-0/step-000000030"]
    got = b / "checkpoints" / "trainer-0" / "step-000000030"
    assert (got / "state.pt").read_bytes() == b"newer" and (got / "COMPLETE").exists()
    assert root.pull("j1", b) == []  # already there


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act for another uid")
def test_a_job_of_its_own_uid_cannot_make_the_worker_copy_other_files(tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_bytes(b"root's secret")
    os.chmod(secret, 0o600)
    root = SharedRoot(str(tmp_path / "root"))
    job = tmp_path / "node" / "job"
    ok = _ckpt(job, "t", 1)
    linked = _ckpt(job, "t", 2)
    (linked / "state.pt").unlink()
    (linked / "state.pt").symlink_to(secret)  # a link the job planted
    hard = _ckpt(job, "t", 3)
    (hard / "state.pt").unlink()
    os.link(secret, hard / "state.pt")  # a hard link to root's file
    for p in [job, *job.rglob("*")]:
        if p not in (linked / "state.pt", hard / "state.pt"):
            os.lchown(p, UID, UID)
    assert root.push("j2", job, uid=UID) == ["t/step-000000001"]
    copied = b"".join(p.read_bytes() for p in (tmp_path / "root").rglob("*") if p.is_file())
    assert b"root's secret" not in copied
    # what comes back on another node is the job's own
    other = tmp_path / "other" / "job"
    other.mkdir(parents=True)
    os.chown(other, UID, UID)
    root.pull("j2", other, UID, UID)
    back = other / "checkpoints" / "t" / "step-000000001"
    assert all(os.lstat(p).st_uid == UID for p in [back, *back.rglob("*")])
    assert ok.exists()


def test_storage_errors_and_bad_options_are_clear(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    with pytest.raises(StorageError, match="is not usable"):
        SharedRoot(str(blocked / "root")).check()
    open_root = tmp_path / "open"
    open_root.mkdir(mode=0o755)
    open_root.chmod(0o755)
    with pytest.raises(StorageError, match=r"is mode 755: jobs on the nodes that mount it could read every job's"):
        SharedRoot(str(open_root)).check()
    if os.geteuid() == 0:  # a group or an owner that a job's identity may have: refused; root's group is fine
        open_root.chmod(0o750)
        os.chown(open_root, 0, 100)
        with pytest.raises(StorageError, match=r"is mode 750: jobs on the nodes that mount it could read every job's"):
            SharedRoot(str(open_root)).check()
        os.chown(open_root, 0, 0)
        SharedRoot(str(open_root)).check()
        os.chown(open_root, 65534, 0)
        with pytest.raises(StorageError, match=r"belongs to uid 65534: that user's jobs could read and change every"):
            SharedRoot(str(open_root)).check()
    made = tmp_path / "made" / "root"
    SharedRoot(str(made)).check()
    assert made.stat().st_mode & 0o777 == 0o700
    opts = tmp_path / "opts.json"
    opts.write_text('{"key": "k", "secret": "s"}')
    os.chmod(opts, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_options(str(opts))
    os.chmod(opts, 0o600)
    assert load_options(str(opts)) == {"key": "k", "secret": "s"}
    with pytest.raises(ValueError, match="--shared-dir"):
        SharedRoot("nosuchproto://x/y")
