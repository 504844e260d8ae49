"""Root (the runner before and after the job starts) meets paths a job controls: a chain of links
the job made must not end root's process (Python 3.11's ``os.path.realpath`` recurses once per
link, so some thousand links raise RecursionError)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from gpuqueue.attempt import launchfail
from gpuqueue.attempt.jobdir import prepare_owned
from gpuqueue.attempt.launch import runner_env
from gpuqueue.attempt.runner import job_event

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: switches to another uid")
UID = 61998
LINKS = 1500  # over Python's recursion limit (1000)


def link_chain(folder: Path, end: Path) -> Path:
    """``folder/l0`` -> ``l1`` -> ... -> ``end``: what a job makes in a folder of its own."""
    for i in range(LINKS - 1):
        os.symlink(f"l{i + 1}", folder / f"l{i}")
    os.symlink(end, folder / f"l{LINKS - 1}")
    return folder / "l0"


def test_a_checkpoint_path_through_a_chain_of_links_is_not_the_jobs_folder(tmp_path: Path) -> None:
    chain = link_chain(tmp_path, tmp_path / "real")
    ev = job_event(json.dumps({"type": "checkpoint", "data": {"path": str(chain)}}).encode(), str(tmp_path))
    assert ev is not None and ev[0] == "checkpoint" and ev[1]["in_job_folder"] is False


def test_a_refused_program_through_a_chain_of_links_is_still_recorded(tmp_path: Path) -> None:
    chain = link_chain(tmp_path, tmp_path / "prog")
    err = PermissionError(errno.EACCES, "Permission denied", str(chain))
    rec = launchfail.record(launchfail.EXEC, err, user={"name": "ana", "uid": UID, "gid": UID})
    assert rec["stage"] == launchfail.EXEC and rec["errno"] == errno.EACCES and rec["found"] == str(chain)


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A state folder that other uids may traverse (as /var/lib/gpuqueue)."""
    d = Path(tempfile.mkdtemp(prefix="gq-rootpaths-"))
    d.chmod(0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


JOB = r'''
echo "{\"type\": \"checkpoint\", \"data\": {\"path\": \"$GPUQUEUE_JOB_DIR/l0\"}}" >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
echo '{"type": "progress", "data": {"done": 1, "total": 1}}' >> "$GPUQUEUE_ATTEMPT_DIR/events.jsonl"
sleep 1
'''


@root_only
def test_a_job_cannot_end_root_s_runner_with_a_chain_of_links(open_root: Path) -> None:
    """The job names, in its own events.jsonl (read in the runner's main loop, as root), a
    checkpoint path through a chain of links: the runner goes on, and the attempt ends with its
    exit record, the job's events kept."""
    paths = prepare_owned(open_root, "j-1", 1, UID, UID)
    link_chain(paths.job, paths.job / "checkpoints")
    launch = {"argv": ["/bin/sh", "-c", JOB], "cwd": str(paths.job), "job_dir": str(paths.job),
              "attempt_dir": str(paths.attempt), "user": {"name": "ana", "uid": UID, "gid": UID},
              "env": {"PATH": "/usr/bin:/bin", "GPUQUEUE_JOB_DIR": str(paths.job),
                      "GPUQUEUE_ATTEMPT_DIR": str(paths.attempt)}}
    (paths.records / "launch.json").write_text(json.dumps(launch))
    done = subprocess.run([sys.executable, "-m", "gpuqueue.attempt.runner", str(paths.records)], env=runner_env(),
                          timeout=60, capture_output=True, text=True)
    assert "RecursionError" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 0
    assert json.loads((paths.records / "exit.json").read_text())["exit_code"] == 0
    events = [json.loads(x) for x in (paths.records / "events.jsonl").read_text().splitlines()]
    assert [e["data"] for e in events if e["type"] == "progress"] == [{"done": 1, "total": 1}]
    assert [e["data"]["in_job_folder"] for e in events if e["type"] == "checkpoint"] == [False]
