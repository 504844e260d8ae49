"""A node's Ray that died at start is seen at once (gpuqueue.job.rayletwatch), and the launcher
connects to its head only once ``ray start`` says it is up (raynodes._head_started). Real
processes stand in for ``ray start`` and its raylet here; the whole path, with Ray, is
tests/cluster/test_ray_own.py's late-agent test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuqueue.job import raynodes
from gpuqueue.job.rayletwatch import RayletWatch, end_when_raylet_ends

# a stand-in for ``ray start``: starts a child process named "raylet" and never reaps it
START = """
import subprocess, sys, time
child = subprocess.Popen([sys.argv[1], "600"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    raylet = tmp_path / "raylet"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", raylet)
    start = subprocess.Popen([sys.executable, "-c", START, str(raylet)], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert start.stdout is not None
    return start, int(start.stdout.readline())


def test_the_watch_says_the_raylet_ended_once_it_is_a_zombie_and_ends_its_ray_start(tmp_path: Path) -> None:
    start, raylet = _start(tmp_path)
    try:
        watch = RayletWatch(start.pid)
        told: list[bool] = []
        end_when_raylet_ends(start, lambda: told.append(True), every_s=0.1)
        assert not watch.ended()  # running
        time.sleep(0.5)
        assert start.poll() is None and not told
        os.kill(raylet, 9)  # dies, and its parent does not reap it, as ray start does not
        assert start.wait(10) == -9 and told == [True]  # its process group killed: it is started again
        assert not watch.ended()  # that ray start is gone: its own exit says what happened
    finally:
        if start.poll() is None:
            os.killpg(start.pid, 9)
            start.wait()


def test_a_ray_start_whose_raylet_never_ran_is_left_alone(tmp_path: Path) -> None:
    start = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        end_when_raylet_ends(start, every_s=0.1)
        assert not RayletWatch(start.pid).ended()
        with pytest.raises(subprocess.TimeoutExpired):
            start.wait(1.5)
    finally:
        os.killpg(start.pid, 9)
        start.wait()


@pytest.fixture
def ray_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPUQUEUE_RAY_DIR", str(tmp_path))
    (tmp_path / "ray-head.log").write_text("Ray runtime started.\n(an earlier start of the head)\n")
    return tmp_path


def test_the_launcher_connects_once_this_start_of_the_head_says_it_is_up(ray_dir: Path,
                                                                          capfd: pytest.CaptureFixture[str]) -> None:
    logged = raynodes._head_log_size()  # the earlier start's line does not count
    head = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        t0 = time.monotonic()
        with open(ray_dir / "ray-head.log", "a") as f:
            f.write("Local node IP: 127.0.0.1\n")
        started = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep(1); "
                                    f"open({str(ray_dir / 'ray-head.log')!r}, 'a').write('Ray runtime started.\\n')"])
        assert raynodes._head_started(head, logged, time.monotonic() + 30) is None
        assert time.monotonic() - t0 >= 1  # not before it said so
        started.wait()
        assert "did not say" not in capfd.readouterr().err
    finally:
        head.kill()
        head.wait()


def test_a_head_that_never_says_it_is_up_is_connected_to_all_the_same_and_the_log_says_so(
        ray_dir: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(raynodes, "HEAD_SAYS_S", 1.0)
    head = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert raynodes._head_started(head, raynodes._head_log_size(), time.monotonic() + 30) is None
        assert ("gpuqueue: the job's Ray head did not say 'Ray runtime started.' in 1 s; connecting to it all "
                "the same") in capfd.readouterr().err
    finally:
        head.kill()
        head.wait()


def test_a_head_that_exits_first_is_said_not_to_have_started(ray_dir: Path) -> None:
    logged = raynodes._head_log_size()
    with open(ray_dir / "ray-head.log", "a") as f:
        f.write("the node timed out during startup\n")
    head = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    why = raynodes._head_started(head, logged, time.monotonic() + 30)
    assert why is not None and why.startswith("gpuqueue: the job's Ray head did not start (exit code 3):"), why
    assert "timed out during startup" in why and "(an earlier start" not in why
