"""A cgroup v2 per job attempt (``gpuqueue.attempt.cgroup``): a job's processes end with its
attempt even when its runner and the worker's runner fork server are killed together.

The runner is the subreaper of its job's processes, the fork server the subreaper of a killed
runner's; killed together, they left the job's detached processes to init, running on as the
job's user on GPUs the scheduler had given to the next job. The runner now enters a cgroup of
its attempt before the job starts, and the worker kills that cgroup before it reports the
attempt lost. The module's own tests run against the real cgroup v2 mount, where this process
may write it (root, or a delegated subtree)."""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import psutil
import pytest

from gpuqueue.attempt import cgroup as cg
from gpuqueue.rest.client import Client
from helpers.servers import wait_until
from training.jobs import logs

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python
from .test_runner_killed import _end, _marked


@functools.lru_cache(maxsize=1)
def _unavailable() -> Optional[str]:
    """Why this process cannot make attempt cgroups here (None: it can)."""
    d = Path(tempfile.mkdtemp(prefix="gq-cgroup-probe-"))
    try:
        cg.AttemptCgroups.open(d, "probe").close()
    except cg.CgroupsUnavailable as e:
        return str(e)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return None


def needs_cgroups() -> None:
    why = _unavailable()
    if why is not None:
        pytest.skip(f"no writable cgroup v2 here: {why}")


# a process that starts a detached grandchild (setsid, double fork) and sleeps
TREE = r'''
import os, sys, time
mark = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)", mark])
    os._exit(0)
os.wait()
print("started", flush=True)
time.sleep(1000)
'''


# -- the module, against the real cgroup v2 mount ----------------------------------------------
def test_an_attempt_cgroup_holds_and_ends_a_detached_tree(tmp_path: Path) -> None:
    needs_cgroups()
    mark = f"gq-cgroup-unit-{os.urandom(4).hex()}"
    cgroups = cg.AttemptCgroups.open(tmp_path, "n1")
    try:
        path = cgroups.create("job/1", 1)  # a name no path can come out of
        assert path.parent == cgroups.base and path.name == "job-job_1-1"
        assert (path / "cgroup.procs").read_text() == ""
        p = subprocess.Popen([sys.executable, "-c", TREE, mark], stdout=subprocess.PIPE,
                             preexec_fn=functools.partial(cg.enter, str(path)))
        try:
            assert p.stdout is not None and p.stdout.readline() == b"started\n"
            wait_until(lambda: len(_marked(mark)) == 2, 10, 0.02, "the job and its detached grandchild")
            detached = [q for q in _marked(mark) if q.pid != p.pid]
            assert len(detached) == 1 and detached[0].ppid() != p.pid  # re-parented: out of its reach by descent
            assert sorted(map(int, (path / "cgroup.procs").read_text().split())) == sorted(q.pid for q in _marked(mark))
            assert cg.end(path) == (2, 0)
            assert not path.exists()
            assert not _marked(mark)
            assert p.wait(5) == -signal.SIGKILL
            assert cg.end(path) == (0, 0)  # already gone
        finally:
            _end(mark)
            p.kill()
            p.wait()
        # what a dead worker left: the next worker of the same state folder sweeps it
        path = cgroups.create("job2", 3)
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", mark],
                             preexec_fn=functools.partial(cg.enter, str(path)))
        try:
            wait_until(lambda: (path / "cgroup.procs").read_text().split() == [str(p.pid)], 5, 0.01, "the process in it")
            again = cg.AttemptCgroups.open(tmp_path, "n1")
            assert again.base == cgroups.base
            assert cg.AttemptCgroups.open(tmp_path / "other", "n1").base != cgroups.base  # another worker's
            assert again.sweep() == [("job-job2-3", 1, 0)]
            assert p.wait(5) == -signal.SIGKILL and not path.exists()
        finally:
            p.kill()
            p.wait()
    finally:
        cg.AttemptCgroups.open(tmp_path / "other", "n1").close()
        cgroups.close()
    assert not cgroups.base.exists()


def _fake(tmp_path: Path, mounts: str, own: str = "0::/\n") -> tuple[str, str]:
    (tmp_path / "mounts").write_text(mounts)
    (tmp_path / "cgroup").write_text(own)
    return str(tmp_path / "mounts"), str(tmp_path / "cgroup")


def test_where_cgroups_are_unavailable_the_reason_is_said(tmp_path: Path) -> None:
    state = tmp_path / "state"
    v1 = "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
    with pytest.raises(cg.CgroupsUnavailable, match=r"^no cgroup v2 file system is mounted \(cgroup v1 only\)$"):
        cg.AttemptCgroups.open(state, "n1", *_fake(tmp_path, v1))
    with pytest.raises(cg.CgroupsUnavailable, match="no 0:: line in /proc/self/cgroup"):
        cg.AttemptCgroups.open(state, "n1", *_fake(tmp_path, f"cgroup2 {tmp_path} cgroup2 rw 0 0\n", "4:memory:/\n"))
    fs = tmp_path / "fs"  # a folder that is no cgroup file system: no cgroup.kill appears in what it makes
    (fs / "a").mkdir(parents=True)
    (fs / "a" / "cgroup.procs").touch()
    files = _fake(tmp_path, f"cgroup2 {fs} cgroup2 rw 0 0\n", "0::/a\n")
    with pytest.raises(cg.CgroupsUnavailable, match=r"the kernel has no cgroup.kill \(Linux 5.14 or later has\)"):
        cg.AttemptCgroups.open(state, "n1", *files)
    assert os.listdir(fs / "a") == ["cgroup.procs"]  # what it made is removed again
    with pytest.raises(cg.CgroupsUnavailable, match="its cgroup /b is not under the cgroup v2 mount"):
        cg.AttemptCgroups.open(state, "n1", *_fake(tmp_path, f"cgroup2 {fs} cgroup2 rw 0 0\n", "0::/b\n"))


def test_the_worker_says_in_one_line_why_it_makes_no_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    from gpuqueue.cluster import worker

    files = _fake(tmp_path, "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n")
    opened = cg.AttemptCgroups.open
    monkeypatch.setattr(worker.AttemptCgroups, "open", lambda s, n: opened(s, n, *files))
    with caplog.at_level(logging.INFO, logger="gpuqueue.worker"):
        assert worker.attempt_cgroups(tmp_path / "state", "n1") is None
    said = [r.getMessage() for r in caplog.records]
    assert said == ["no cgroup per attempt: no cgroup v2 file system is mounted (cgroup v1 only). A job's processes "
                    "that outlive both its runner and the runner fork server run on; to end them too, run the worker "
                    "as root on a host with cgroup v2 (Linux 5.14 or later), or give it a delegated cgroup subtree "
                    "(systemd: Delegate=yes in the worker's unit, as deploy/systemd/gpuqueue-worker@.service has)"]
    assert "\n" not in said[0]


def test_the_shipped_worker_unit_delegates_its_cgroup() -> None:
    unit = Path(__file__).parents[2] / "deploy" / "systemd" / "gpuqueue-worker@.service"
    assert "\nDelegate=yes\n" in unit.read_text()


# -- a cluster: the runner and its fork server killed together -----------------------------------
JOB = r'''
import os, subprocess, sys, time
mark, pidfile = sys.argv[1], sys.argv[2]
if os.environ["GPUQUEUE_ATTEMPT"] != "1":
    print("attempt", os.environ["GPUQUEUE_ATTEMPT"], "runs normally", flush=True)
    sys.exit(0)
# a detached descendant (a session of its own, double-forked: its parent ends at once) that
# writes its pid, then becomes `sleep 1000`
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(pidfile + ".tmp", "w").write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        os.execv("/bin/sleep", ["sleep", "1000"])
    os._exit(0)
os.wait()
# out of its cgroup, into the worker's own, or the root's: refused (not its files)
own = open("/proc/self/cgroup").read().split("0::", 1)[1].split()[0]
mount = [line.split()[1] for line in open("/proc/self/mounts") if line.split()[2] == "cgroup2"][0]
for where in (os.path.dirname(os.path.dirname(os.path.dirname(own))), "/"):
    try:
        open(os.path.join(mount + where, "cgroup.procs"), "w").write(str(os.getpid()))
        print("escaped to", where, flush=True)
    except OSError as e:
        print("refused", e.errno, flush=True)
print("started", own, flush=True)
time.sleep(1000)
'''


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """One node whose worker runs as root, each job under its user's own dynamic uid (the
    worker's own user where the tests do not run as root)."""
    needs_cgroups()

    def pids(c: Cluster) -> None:
        (c.root.parent / "pids").mkdir(mode=0o1777)
        (c.root.parent / "pids").chmod(0o1777)  # the job (its own uid) writes the descendant's pid here

    args: tuple[str, ...] = () if os.geteuid() == 0 else ("--identities", "none")
    with identity_cluster("gq-cgroup-", {"n1": 1}, setup=pids, worker_args=args) as c:
        yield c


def _submit_detached(c: Cluster) -> tuple[Client, str, str, Path]:
    """Alice's job that leaves a detached ``sleep 1000`` behind (setsid + double fork), its pid
    written to a file: (her client, the job, the job's mark for ``_end``, the pid file)."""
    py, _ = job_python()
    mark = f"gq-cgroup-{os.urandom(4).hex()}"
    pidfile = c.root.parent / "pids" / f"{mark}.pid"
    (c.root / "detach.py").write_text(JOB)
    alice = c.client("alice")
    job = alice.submit({"kind": "command", "gpus": 1, "command": [py, str(c.root / "detach.py"), mark, str(pidfile)]})["id"]
    return alice, job, mark, pidfile


def _detached(pidfile: Path) -> psutil.Process:
    """The job's detached descendant, once it runs ``sleep 1000``."""
    wait_until(pidfile.exists, 60, 0.05, "the detached descendant")
    sleeper = psutil.Process(int(pidfile.read_text()))
    wait_until(lambda: sleeper.cmdline() == ["sleep", "1000"], 10, 0.02, "the descendant's exec")
    return sleeper


def test_a_runner_killed_with_its_fork_server_leaves_nothing_running(cluster: Cluster) -> None:
    c = cluster
    alice, job, mark, pidfile = _submit_detached(c)
    sleeper: Optional[psutil.Process] = None
    try:
        sleeper = _detached(pidfile)
        pid = sleeper.pid
        runner = alice.get(job)["attempts"][-1]["pid"]
        server = psutil.Process(runner).ppid()
        assert "gpuqueue.cluster.forkserver" in " ".join(psutil.Process(server).cmdline())
        assert pid not in (runner, server) and os.getsid(pid) != os.getsid(runner)  # detached: its own session
        # together: the server, stopped, cannot end what the runner's death leaves it
        os.kill(server, signal.SIGSTOP)
        os.kill(runner, signal.SIGKILL)
        os.kill(server, signal.SIGKILL)
        t0 = time.monotonic()

        def lost() -> bool:
            attempts = alice.get(job)["attempts"]
            return bool(attempts) and attempts[0].get("outcome") == "lost"

        wait_until(lost, 60, 0.02, "attempt 1 reported lost")
        # the moment the attempt is reported lost, nothing of it runs
        assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE, \
            f"the detached descendant {pid} survived its runner and fork server"
        lost_s = time.monotonic() - t0
        rec = c.wait_done([job], 60)[job]
    finally:
        if sleeper is not None and sleeper.is_running():
            sleeper.kill()
        _end(mark)
    assert rec["state"] == "succeeded", rec
    first, second = rec["attempts"]
    events = alice.events(job)
    said = first["message"]
    if os.geteuid() == 0:  # the job runs as its user's own uid
        assert logs(events).count(f"refused {errno.EACCES}") == 2, logs(events)
        mine = (cg.own_cgroup(Path("/proc/self/cgroup").read_text()) or "").rstrip("/")  # the worker's, too
        assert f"started {mine}/gpuqueue/n1-" in logs(events) and f"/job-{job}-1" in logs(events), logs(events)
    assert "its runner fork server is gone too; the worker ended the 2 processes" in said and "(all of the attempt's cgroup)" in said, said
    assert second["outcome"] == "succeeded"
    log = c.log("worker-n1")
    assert "a cgroup per attempt under" in log, log
    print(f"\nattempt 1 reported lost {lost_s * 1000:.0f} ms after its runner and fork server were killed; "
          "its detached descendant was gone by then")


def test_a_restarted_worker_ends_what_a_dead_worker_left(cluster: Cluster) -> None:
    """The worker, its fork server and the runner killed together (a crash of the whole tree): the
    job's detached descendant runs on, but the next worker of the same state folder ends the
    attempt cgroups left there as it starts."""
    c = cluster
    alice, job, mark, pidfile = _submit_detached(c)
    sleeper: Optional[psutil.Process] = None
    try:
        sleeper = _detached(pidfile)
        runner = psutil.Process(alice.get(job)["attempts"][-1]["pid"])
        server = psutil.Process(runner.ppid())
        for p in (server, runner):  # none of them gets to end anything
            p.suspend()
        c.kill("worker-n1")
        for p in (runner, server):
            p.kill()
        time.sleep(0.5)
        assert sleeper.is_running() and sleeper.status() != psutil.STATUS_ZOMBIE  # nobody left to end it
        c.start_worker("n1")
        wait_until(lambda: c.log("worker-n1").count("a cgroup per attempt under") == 2, 30, 0.05,
                   "the new worker's start")  # its log follows the first one's
        assert not sleeper.is_running() or sleeper.status() == psutil.STATUS_ZOMBIE
        assert f"cgroup job-{job}-1, left by an earlier worker: 2 processes ended" in c.log("worker-n1")
        rec = c.wait_done([job], 60)[job]
    finally:
        if sleeper is not None and sleeper.is_running():
            sleeper.kill()
        _end(mark)
    assert rec["state"] == "succeeded" and rec["attempts"][0]["outcome"] == "lost", rec
