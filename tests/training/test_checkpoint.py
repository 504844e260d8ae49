"""Unit tests of the checkpoint manager and the job-side API's event path (real files, real
processes; no queue needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuqueue.job.checkpoint import MARKER, Checkpointer


def steps(c: Checkpointer) -> list[int]:
    return [x.step for x in c.list()]


def test_max_checkpoints_and_best_min(tmp_path: Path) -> None:
    c = Checkpointer(str(tmp_path), every_steps=10, max_checkpoints=2, monitor="val_loss", mode="min")
    losses = {10: 3.0, 20: 1.0, 30: 2.5, 40: 2.0, 50: 1.5}
    for s, v in losses.items():
        c.save(s, {"step": s, "w": [s]}, metrics={"val_loss": v})
        assert len(c.list()) <= 3  # the newest two + the best
    assert steps(c) == [20, 40, 50]
    assert c.best().step == 20 and c.best().metrics == {"val_loss": 1.0}
    assert c.latest().step == 50
    assert c.load()["step"] == 50
    assert c.load("best")["w"] == [20]
    # folders on disk are exactly the complete ones
    assert sorted(p.name for p in Path(c.url).iterdir()) == ["step-000000020", "step-000000040", "step-000000050"]


def test_best_max_and_no_monitor(tmp_path: Path) -> None:
    c = Checkpointer(str(tmp_path / "a"), max_checkpoints=1, monitor="acc", mode="max")
    for s, v in [(1, 0.5), (2, 0.9), (3, 0.7)]:
        c.save(s, {"s": s}, metrics={"acc": v})
    assert steps(c) == [2, 3] and c.best().step == 2
    plain = Checkpointer(str(tmp_path / "b"), max_checkpoints=2)
    for s in range(1, 5):
        plain.save(s, {"s": s})
    assert steps(plain) == [3, 4] and plain.best() is None


def test_schedule_every_steps(tmp_path: Path) -> None:
    c = Checkpointer(str(tmp_path), every_steps=3, max_checkpoints=None)
    for s in range(10):
        c.maybe_save(s, lambda: {"s": s})
    assert steps(c) == [3, 6, 9]


CRASHER = r"""
import os, sys
from gpuqueue.job.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1], max_checkpoints=3)
c.save(1, {"step": 1})
def half_written(folder):
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
        f.write(b"x" * 1000)
        f.flush()
        os._exit(9)   # the process dies in the middle of the save
c.save(2, {"step": 2}, writer=half_written)
"""


def test_crash_during_save_is_never_loaded(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    root = tmp_path / "default"
    assert any(p.name.startswith(".tmp-step-2") for p in root.iterdir())  # the torn save is there
    c = Checkpointer(str(tmp_path))
    assert steps(c) == [1] and c.load() == {"step": 1}
    assert [p.name for p in root.iterdir()] == ["step-000000001"]  # and cleaned away


def test_folder_without_marker_is_ignored(tmp_path: Path) -> None:
    c = Checkpointer(str(tmp_path))
    c.save(5, {"step": 5})
    c.save(7, {"step": 7})
    # the crash window between the folder's rename and the marker: step 7 has no marker
    os.remove(Path(c.url) / "step-000000007" / MARKER)
    assert c.latest().step == 5 and c.load() == {"step": 5}
    Checkpointer(str(tmp_path))
    assert not (Path(c.url) / "step-000000007").exists()


def test_fsspec_url_storage() -> None:
    pytest.importorskip("fsspec")
    c = Checkpointer("memory://ckpt-test", max_checkpoints=2, monitor="loss")
    for s, v in [(1, 2.0), (2, 1.0), (3, 3.0), (4, 4.0)]:
        c.save(s, {"s": s}, metrics={"loss": v}, writer=lambda d: Path(d, "extra.txt").write_text("hi"))
    assert steps(c) == [2, 3, 4]
    assert c.latest().path.startswith("memory://") and "extra.txt" in c.latest().files
    assert c.load() == {"s": 4} and c.load("best") == {"s": 2}
    local = c.local_path(c.latest())
    assert Path(local, "extra.txt").read_text() == "hi"


def test_resume_from_env_and_job_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = Checkpointer(str(tmp_path / "old"))
    info = old.save(30, {"step": 30})
    monkeypatch.setenv("GPUQUEUE_JOB_ID", "j-new")
    monkeypatch.setenv("GPUQUEUE_RESUME_FROM", info.path)
    monkeypatch.setenv("GPUQUEUE_ATTEMPT_DIR", str(tmp_path))  # no events.jsonl: emit is a no-op
    new = Checkpointer(str(tmp_path / "shared"))
    assert new.url == str(tmp_path / "shared" / "j-new" / "default")  # each job its own prefix
    assert new.latest() is None and new.resume_point().step == 30
    assert new.load() == {"step": 30}
    new.save(31, {"step": 31})
    assert new.load() == {"step": 31}  # its own checkpoints win over the resume source


def test_a_checkpoint_folder_from_the_environment_gets_the_job_id_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/training.md: ``directory=`` (or ``GPUQUEUE_CHECKPOINT_DIR``) gets the job id appended
    inside a job, so jobs never see each other's checkpoints. The variable did not: every job
    that it reached saved to and resumed from ``<dir>/default``, the last job's checkpoints."""
    monkeypatch.setenv("GPUQUEUE_CHECKPOINT_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("GPUQUEUE_ATTEMPT_DIR", str(tmp_path))  # no events.jsonl: emit is a no-op
    monkeypatch.setenv("GPUQUEUE_JOB_ID", "j-a")
    a = Checkpointer()
    assert a.url == str(tmp_path / "scratch" / "j-a" / "default")
    a.save(7, {"step": 7})
    monkeypatch.setenv("GPUQUEUE_JOB_ID", "j-b")
    assert Checkpointer().latest() is None and Checkpointer().load() is None
    monkeypatch.setenv("GPUQUEUE_JOB_ID", "j-a")  # its next attempt resumes from its own
    assert Checkpointer().load() == {"step": 7}


def test_bad_arguments_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'min' or 'max'"):
        Checkpointer(str(tmp_path), mode="lowest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_checkpoints"):
        Checkpointer(str(tmp_path), max_checkpoints=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        Checkpointer(str(tmp_path)).load(str(tmp_path / "nope"))


RANK_SCRIPT = r"""
import gpuqueue
for s in range(5):
    gpuqueue.log(step=s, loss=1.0 / (s + 1))
gpuqueue.progress(5, 5)
c = gpuqueue.Checkpointer(max_checkpoints=2)
c.save(5, {"s": 5}, metrics={"loss": 0.2})
"""


@pytest.mark.parametrize("rank", ["0", "1"])
def test_process_without_the_pipe_appends_to_events_file(tmp_path: Path, rank: str) -> None:
    """A torchrun rank / Ray worker has no event pipe: rank 0 appends to events.jsonl, others stay quiet."""
    (tmp_path / "events.jsonl").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUQUEUE_")}
    env.update(GPUQUEUE_JOB_ID="j-x", GPUQUEUE_ATTEMPT_DIR=str(tmp_path), GPUQUEUE_JOB_DIR=str(tmp_path),
               RANK=rank, WORLD_SIZE="2")
    subprocess.run([sys.executable, "-c", RANK_SCRIPT], env=env, check=True)
    recs = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    if rank == "1":
        assert recs == [] and not (tmp_path / "checkpoints" / "default").exists()
        return
    types = [r["type"] for r in recs]
    assert types.count("metrics") == 5 and "progress" in types and "checkpoint" in types
    assert [r["data"]["step"] for r in recs if r["type"] == "metrics"] == [0, 1, 2, 3, 4]
    cp = next(r["data"] for r in recs if r["type"] == "checkpoint")
    assert cp["step"] == 5 and cp["path"].startswith(str(tmp_path / "checkpoints")) and cp["metrics"] == {"loss": 0.2}
