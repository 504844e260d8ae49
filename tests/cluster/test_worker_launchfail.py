"""A worker running jobs under their users' own uids, from a virtual environment whose ``python``
is a link into a folder only root may enter (a venv made from root's pyenv): the job cannot
start, and what the user reads names the program it found, where the link leads, the folder
that uid may not enter and the fix, not just "Permission denied: 'python'"."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import pytest

from helpers.servers import RedisServer

from .conftest import Cluster, assert_private_tmp, outside_tmp
from .test_isolation import _others_may_run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the worker runs jobs under the users' own uids")


@pytest.fixture
def root() -> Iterator[Path]:
    """A folder every uid may enter (pytest's tmp_path is root's own, mode 700), out of /tmp: each
    job gets its own /tmp, as where the unit ships."""
    d = outside_tmp("gq-launchfail-")
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_an_interpreter_behind_a_root_only_folder_is_named_with_that_folder(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = root / "closed"  # like /root: mode 700
    (closed / "bin").mkdir(parents=True)
    closed.chmod(0o700)
    real = closed / "bin" / "python3"
    real.symlink_to(os.path.realpath(sys.executable))
    venv = root / "venv" / "bin"  # a venv anyone may read, its python a link into the closed folder
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(real)
    rest = os.environ.get("PATH", os.defpath)
    others = [p for p in rest.split(os.pathsep)
              if os.path.exists(os.path.join(p, "python")) and _others_may_run(os.path.join(p, "python"))]
    if others:  # exec would go on to that one
        pytest.skip(f"another python on PATH ({others}) that the job's uid may run")
    monkeypatch.setenv("PATH", f"{venv}{os.pathsep}{rest}")  # the worker runs "from the venv"
    redis = RedisServer(root / "redis").start()
    c = Cluster(root / "cluster", redis, {"n1": 1}, worker_args=())  # as root: dynamic identities
    c.root.chmod(0o755)
    try:
        c.start()
        assert_private_tmp(c)
        bare = c.submit("alice", gpus=0, command=["python", "-c", "print(1)"])
        full = c.submit("alice", gpus=0, command=[str(venv / "python"), "-c", "print(1)"])
        script = c.root / "train.sh"  # in an open folder, but not executable by others
        script.write_text("#!/bin/sh\necho hi\n")
        script.chmod(0o744)
        noexec = c.submit("alice", gpus=0, command=[str(script)])
        done = c.wait_done([bare, full, noexec], 60)
        fix = (f"install the environment where every user may read it, let them in (chmod o+x {closed}), "
               f"or run the job with an interpreter that uid may run (its --python, or the full path of its "
               f"first word)")
        # where the link leads as far as the job's uid may follow it: root reads no link in the
        # closed folder for it (another user's folder's links are that user's)
        for job, shown in ((bare, f"python (found at {venv / 'python'}, a link to {real})"),
                           (full, f"{venv / 'python'} (a link to {real})")):
            rec = done[job]
            assert rec["state"] == "failed" and [a["outcome"] for a in rec["attempts"]] == ["cannot_start"], rec
            err = rec["error"]
            assert err.startswith(f"the job could not start on node n1: {shown} cannot be run by uid "), err
            assert f" (user alice): that uid may not enter {closed} (mode 700, owner uid 0): {fix}" in err, err
            # the job's log says the same, beside the OS error
            lines = [e["data"]["line"] for e in c.client("alice").events(job) if e["type"] == "log"]
            assert any("Permission denied" in line and f"may not enter {closed} (mode 700" in line for line in lines), lines
        err = done[noexec]["error"]
        assert err.startswith(f"the job could not start on node n1: {script} is not executable by uid "), err
        assert err.endswith(" (user alice): make it executable by that user (chmod a+rx, and a+x on its folders), "
                            "or ask your admin to"), err
    finally:
        c.close()
        redis.stop()
