"""A multi-node job's part on every node of its gang is held by a cgroup of the attempt there
(``gpuqueue.attempt.cgroup``, ``gpuqueue.cluster.rayjob``): root workers with per-user dynamic
identities, cgroups and no shared Ray, so a ``--nodes 2`` job runs its ranks on a Ray of its own,
whose other node the worker starts (``privtmp.exec_as``) in a ``join-<job>-<attempt>`` cgroup of
that node's worker.

Each rank leaves a process behind that no mark finds: a session of its own, double-forked (its
parent ends at once, so it is re-parented out of the job's tree), with an empty environment (no
``GPUQUEUE_RAY_DIR``). On the first node the attempt's own cgroup held it before; on the other
node it ran on after the job, as the job's uid, holding the job's GPUs there (on old code:
``the detached process of rank 1 on n2 ... survived the job``). Now, once the job ended (it
finished, or it was cancelled), it is gone, and no process of the job's uid is left on the
machine (both nodes). The join cgroups are swept at a worker's start like the attempts'."""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from gpuqueue.attempt import cgroup as cg
from gpuqueue.queue.text import message_event_line
from gpuqueue.rest.client import Client
from helpers.servers import wait_until
from training.jobs import logs

from .conftest import Cluster, identity_cluster
from .test_attempt_cgroup import needs_cgroups
from .test_isolation import job_python
from .test_ray_privtmp import _procs_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

# one rank: leave a detached process with a scrubbed environment behind, say its pid, then wait
# for `go` (or run until stopped)
RANK = r'''
import json, os, sys, time
out, go = sys.argv[1:3]
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    os.setsid()
    if os.fork() == 0:  # its parent ends at once: re-parented, out of the job's process tree
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        os.execve("/bin/sleep", ["sleep", "600"], {})  # no environment at all: no mark
    os._exit(0)
os.close(w)
os.wait()
pid = int(os.read(r, 64))
with open(out, "a") as f:
    f.write("RANK " + json.dumps({"rank": int(os.environ["RANK"]), "node": os.environ["GPUQUEUE_NODE"], "pid": pid,
                                  "uid": os.getuid(), "me": os.getpid(), "sid": os.getsid(0)}) + "\n")
while not os.path.exists(go):
    time.sleep(0.1)
'''


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    pytest.importorskip("ray")
    needs_cgroups()
    for k in ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)  # no shared Ray: each multi-node attempt gets its own
    first = 68000 + 50 * random.randrange(40)  # uids of its own (test_ray_own: 62000-64999, test_ray_privtmp: 66000-67999)

    def scripts(c: Cluster) -> None:
        (c.root / "rank.py").write_text(RANK)
        (c.root / "marks").mkdir(mode=0o777)
        (c.root / "marks").chmod(0o777)  # the ranks (the owner's uid) write there

    with identity_cluster("gq-gang-cgroup-", {"n1": 1, "n2": 1}, setup=scripts,
                          worker_args=("--uid-range", f"{first}-{first + 49}")) as c:
        yield c


def _ranks(path: Path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    return sorted((json.loads(m) for m in re.findall(r"RANK (\{.*\})", text)), key=lambda r: r["rank"])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cgroup_of(pid: int) -> str:
    return cg.own_cgroup(Path(f"/proc/{pid}/cgroup").read_text()) or ""


def _start(c: Cluster, alice: Client, root: Client, tag: str) -> tuple[str, Path, list[dict], dict[int, str]]:
    """Alice's 2-node job; once both ranks left their process: (the job, its `go` file, the
    ranks' reports, each left process's cgroup)."""
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    go, out = c.root / "marks" / f"go-{tag}", c.root / "marks" / f"ranks-{tag}.txt"
    job = alice.submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
                        "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
                        "command": [py, str(c.root / "rank.py"), str(out), str(go)]})["id"]

    def both() -> object:
        j = root.get(job)
        if j["state"] in ("failed", "succeeded", "cancelled"):
            raise AssertionError(f"{j['state']}: {j.get('error')}\n{logs(root.events(job))[-3000:]}\n"
                                 f"{c.log('worker-n1')[-2000:]}\n{c.log('worker-n2')[-2000:]}")
        ranks = _ranks(out)
        return len(ranks) == 2 and ranks

    ranks = wait_until(both, 180, 0.5, "both ranks left their process")
    assert [r["node"] for r in ranks] == ["n1", "n2"], ranks
    where: dict[int, str] = {}
    for r in ranks:
        p = psutil.Process(r["pid"])
        wait_until(lambda: p.cmdline() == ["sleep", "600"], 10, 0.02, "the left process's exec")
        # the job's uid; a session of its own, out of the rank's process tree
        assert p.uids().real == r["uid"] and os.getsid(p.pid) != r["sid"] and p.ppid() != r["me"], r
        assert Path(f"/proc/{p.pid}/environ").read_bytes() == b"", r  # no mark
        where[p.pid] = _cgroup_of(p.pid)
    return job, go, ranks, where


def _no_process_of(c: Cluster, uid: int) -> None:
    """Wait (60 s) until no process of ``uid`` is left; else fail naming those left and the
    workers' last lines."""
    try:
        wait_until(lambda: not _procs_of(uid), 60, 0.5, "no process of the owner's uid")
    except AssertionError:
        left = []
        for p in _procs_of(uid):
            try:
                left.append((p.pid, p.status(), " ".join(p.cmdline())[:200]))
            except psutil.Error:
                pass
        raise AssertionError(f"processes of uid {uid} left 60 s after the job: {left}\n"
                             f"{c.log('worker-n1')[-1500:]}\n{c.log('worker-n2')[-1500:]}") from None


def _assert_nothing_left(c: Cluster, job: str, ranks: list[dict], where: dict[int, str]) -> None:
    """After the job: its ranks' left processes are gone, and every process of its uid."""
    try:
        wait_until(lambda: not any(_alive(r["pid"]) for r in ranks), 20, 0.1, "the ranks' left processes gone")
    except Exception:  # noqa: BLE001 - say which survived, and where it was
        survivors = [f"the detached process of rank {r['rank']} on {r['node']} (pid {r['pid']}, cgroup "
                     f"{where[r['pid']]}) survived the job" for r in ranks if _alive(r["pid"])]
        raise AssertionError("; ".join(survivors)) from None
    _no_process_of(c, ranks[0]["uid"])
    # each was in a cgroup of the attempt on its node: its own on the first, the join's on the other
    assert where[ranks[0]["pid"]].endswith(f"/gpuqueue/{_base('n1', c)}/job-{job}-1"), where
    assert where[ranks[1]["pid"]].endswith(f"/gpuqueue/{_base('n2', c)}/join-{job}-1"), where
    # both ended and removed: the worker removes a cgroup, ends its Ray's folder and says so a moment
    # after the last process in it is gone
    mount = cg.cgroup2_mount(Path("/proc/self/mounts").read_text())
    assert mount is not None
    wait_until(lambda: not [w for w in where.values() if (mount / w.lstrip("/")).exists()], 10, 0.1,
               f"the attempt's cgroups removed: {where}")
    wait_until(lambda: f"attempt {job}/1: its Ray on n2 ended" in c.log("worker-n2"), 10, 0.1,
               f"n2's worker saying the job's Ray there ended: {c.log('worker-n2')[-3000:]}")


def _base(node: str, c: Cluster) -> str:
    """The name of the folder of the node's worker's attempt cgroups."""
    m = re.search(r"a cgroup per attempt under \S*/gpuqueue/([^/\"\s]+)", c.log(f"worker-{node}"))
    assert m is not None, c.log(f"worker-{node}")[-2000:]
    return m.group(1)


def _kill(ranks: list[dict]) -> None:
    for r in ranks:
        if _alive(r["pid"]):
            try:
                os.kill(r["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_what_a_rank_on_another_node_leaves_behind_ends_with_the_job(cluster: Cluster) -> None:
    c = cluster
    alice, root = c.client("alice"), c.client("root")
    ranks: list[dict] = []
    try:
        # it finishes normally
        job, go, ranks, where = _start(c, alice, root, "done")
        go.touch()
        rec = c.wait_done([job], 120)[job]
        assert rec["state"] == "succeeded", (rec.get("error"), logs(root.events(job))[-3000:])
        _assert_nothing_left(c, job, ranks, where)
        uid = ranks[0]["uid"]
        # nor is its rank 1's scratch folder left in the job's /tmp on n2
        assert list(c.root.glob(f"node-n2/tmp/{uid}/gpuqueue-{job}-rank*")) == []

        # it is cancelled while its ranks run: rank 1 is killed, its scratch folder removed too
        job, go, ranks, where = _start(c, alice, root, "cancel")
        alice.cancel(job)
        rec = c.wait_done([job], 120)[job]
        assert rec["state"] == "cancelled", rec
        _assert_nothing_left(c, job, ranks, where)
        wait_until(lambda: not list(c.root.glob(f"node-n2/tmp/{uid}/gpuqueue-{job}-rank*")), 10, 0.2,
                   "the killed rank's scratch folder removed")
    finally:
        _kill(ranks)


def test_a_stopped_or_killed_worker_leaves_nothing_of_its_part_running(cluster: Cluster) -> None:
    """The worker of the other node stops (SIGTERM): its part of the job ends with it. It is
    killed outright (SIGKILL): what the rank left runs on until the next worker of its state
    folder starts, which ends the join's cgroup as it sweeps the attempts'."""
    c = cluster
    alice, root = c.client("alice"), c.client("root")
    left: list[dict] = []
    try:
        job, go, ranks, where = _start(c, alice, root, "stop")
        left += ranks
        c.kill("worker-n2", signal.SIGTERM)
        assert not _alive(ranks[1]["pid"]), f"rank 1's detached process (cgroup {where[ranks[1]['pid']]}) survived " \
                                            "the stop of its node's worker"
        assert f"attempt {job}/1: its Ray on n2 ended" in c.log("worker-n2")
        c.start_worker("n2")
        alice.cancel(job)
        c.wait_done([job], 120)

        job, go, ranks, where = _start(c, alice, root, "kill")
        left += ranks
        sleeper = ranks[1]["pid"]
        c.kill("worker-n2")
        time.sleep(0.5)
        assert _alive(sleeper)  # nobody left to end it
        c.start_worker("n2")
        wait_until(lambda: c.log("worker-n2").count("a cgroup per attempt under") == 3, 30, 0.05,
                   "the new worker's start")  # its log follows the earlier ones'
        assert not _alive(sleeper)
        assert f"cgroup join-{job}-1, left by an earlier worker: " in c.log("worker-n2"), c.log("worker-n2")[-3000:]
        alice.cancel(job)
        c.wait_done([job], 120)
        _no_process_of(c, ranks[0]["uid"])
    finally:
        _kill(left)


def test_the_owner_is_told_when_a_node_cannot_hold_the_jobs_processes_in_a_cgroup(cluster: Cluster) -> None:
    """The worker of the other node cannot make the join's cgroup (its attempt cgroups may have no
    more children here: ``cgroup.max.descendants`` 0). The job runs, its processes there ended by
    their mark alone; its owner reads so, and why, where they look (the job's log: ``gpuqueue
    logs``, the cell), not only the node's worker log (on old code: nothing but the worker log)."""
    c = cluster
    m = re.search(r"a cgroup per attempt under (\S*/gpuqueue/[^/\"\s]+)", c.log("worker-n2"))
    assert m is not None, c.log("worker-n2")[-2000:]
    limit = Path(m.group(1)) / "cgroup.max.descendants"  # of the n2 worker's attempt cgroups only
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    alice, root = c.client("alice"), c.client("root")
    limit.write_text("0")
    try:
        job = alice.submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
                            "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
                            "command": [py, "-c", "pass"]})["id"]
        rec = c.wait_done([job], 180)[job]
    finally:
        limit.write_text("max")
    events = alice.events(job)
    assert rec["state"] == "succeeded", (rec.get("error"), logs(root.events(job))[-3000:])
    said = [line for e in events if (line := message_event_line(e["type"], e["data"]))]
    told = [line for line in said if "on node n2 the job's processes are held in no cgroup" in line]
    assert told == ["[gpuqueue] warning: on node n2 the job's processes are held in no cgroup (the worker cannot "
                    "make one: Resource temporarily unavailable): when the attempt ends there, only those that still "
                    "carry its mark (GPUQUEUE_RAY_DIR in their environment) are ended, so a process the job detached "
                    "from it with another environment (a daemon) may run on there"], said
    uid_line = re.search(rf"attempt {job}/1: this node joined its Ray at \S+ as uid (\d+)", c.log("worker-n2"))
    assert uid_line is not None, c.log("worker-n2")[-3000:]
    wait_until(lambda: not _procs_of(int(uid_line.group(1))), 60, 0.5, "no process of the owner's uid (the mark)")


def test_the_owner_is_told_when_a_one_node_attempt_runs_in_no_cgroup(cluster: Cluster) -> None:
    """No worker can make an attempt cgroup (``cgroup.max.descendants`` 0 on both): a one-node
    job runs all the same, and its owner reads in the job's log that it runs in no cgroup, why,
    and what that leaves open (on old code: nothing but the node's worker log)."""
    c = cluster
    limits = []
    for node in ("n1", "n2"):
        m = re.search(r"a cgroup per attempt under (\S*/gpuqueue/[^/\"\s]+)", c.log(f"worker-{node}"))
        assert m is not None, c.log(f"worker-{node}")[-2000:]
        limits.append(Path(m.group(1)) / "cgroup.max.descendants")
    py, _ = job_python()
    alice, root = c.client("alice"), c.client("root")
    for limit in limits:
        limit.write_text("0")
    try:
        job = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [py, "-c", "print('ran')"]})["id"]
        rec = c.wait_done([job], 120)[job]
    finally:
        for limit in limits:
            limit.write_text("max")
    assert rec["state"] == "succeeded", (rec.get("error"), logs(root.events(job))[-3000:])
    said = [line for e in alice.events(job) if (line := message_event_line(e["type"], e["data"]))]
    told = [line for line in said if "the job's processes are held in no cgroup" in line]
    assert told in ([f"[gpuqueue] warning: on node {node} the job's processes are held in no cgroup (the worker "
                     f"cannot make one: Resource temporarily unavailable): its runner still ends them when the "
                     f"attempt ends, but if the runner is killed together with the node's runner fork server, what "
                     f"the job started may run on there"] for node in ("n1", "n2")), said
    assert "ran" in logs(alice.events(job))


def test_a_restarted_worker_ends_the_join_cgroups_a_dead_worker_left(tmp_path: Path) -> None:
    """The join cgroups are the worker's attempt cgroups: named apart from the node's own
    attempts, swept with them at a worker's start."""
    needs_cgroups()
    cgroups = cg.AttemptCgroups.open(tmp_path, "n2")
    try:
        own, join = cgroups.create("j-1", 1), cgroups.create("j-1", 1, "join")
        assert (own.name, join.name) == ("job-j-1-1", "join-j-1-1")
        with pytest.raises(ValueError, match="not a part of an attempt"):
            cgroups.name("j-1", 1, "../x")
        ps = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                               preexec_fn=functools.partial(cg.enter, str(d))) for d in (own, join)]
        try:
            for p, d in zip(ps, (own, join)):
                wait_until(lambda: (d / "cgroup.procs").read_text().split() == [str(p.pid)], 5, 0.01, "in its cgroup")
            assert cg.AttemptCgroups.open(tmp_path, "n2").sweep() == [("job-j-1-1", 1, 0), ("join-j-1-1", 1, 0)]
            assert [p.wait(5) for p in ps] == [-signal.SIGKILL] * 2
            assert not own.exists() and not join.exists()
        finally:
            for p in ps:
                p.kill()
                p.wait()
    finally:
        cgroups.close()
