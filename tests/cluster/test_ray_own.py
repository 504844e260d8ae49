"""Multi-node jobs on a Ray cluster of their own (gpuqueue.cluster.rayjob): root workers with
per-user identities and no shared Ray (no RAY_ADDRESS). A ``--nodes 2`` job's ranks run under
its owner's uid on both nodes; another user's job given the head's address is refused for the
token, and so is its every call to each other port the job's Ray listens on; the token is in no
record, event, log or command line; cancel leaves no process of the owner's uid and no private
folder."""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import psutil
import pytest
import redis as redislib

from helpers.rays import FLOOR_RAY, OLD_RAY, floor_ray, ray_first
from helpers.servers import RedisServer, free_port, wait_until
from training.jobs import logs

from .conftest import Cluster, shipped_acl
from .test_isolation import PASSWORDS, job_python

pytest.importorskip("ray")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

RANKS = r'''
import json, os, sys, time
with open(sys.argv[2], "a") as f:
    f.write("RANKSEEN " + json.dumps({"rank": int(os.environ["RANK"]), "uid": os.getuid(),
                                      "node": os.environ["GPUQUEUE_NODE"]}) + "\n")
time.sleep(float(sys.argv[1]))
'''

INTRUDER = r'''
import os, sys
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(os.environ["GPUQUEUE_ATTEMPT_DIR"], "token")
open(os.environ["RAY_AUTH_TOKEN_PATH"], "w").write("f" * 64)
import ray
try:
    ray.init(address=sys.argv[1], logging_level="ERROR")
    print("INTRUDER-IN", ray.get(ray.remote(lambda: os.getuid()).remote()), flush=True)
except Exception as e:
    print("INTRUDER-REFUSED", type(e).__name__, str(e)[:200], flush=True)
'''


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for k in ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)  # no shared Ray: each multi-node attempt gets its own
    root = Path(tempfile.mkdtemp(prefix="gq-rayown-"))
    root.chmod(0o711)
    (root / "redis").mkdir(mode=0o700)
    redis = RedisServer(root / "redis", password=PASSWORDS["admin"],  # the shipped ACL users: one per process
                        conf=shipped_acl({r: PASSWORDS[r] for r in ("scheduler", "api", "worker")})).start()
    first = 62000 + 50 * random.randrange(60)  # uids of its own: other clusters on this machine count from 61184
    c = Cluster(root / "cluster", redis, {"n1": 1, "n2": 1}, worker_args=("--uid-range", f"{first}-{first + 49}"))
    c.role_urls = {r: f"redis://gpuqueue-{r}:{PASSWORDS[r]}@127.0.0.1:{redis.port}/0"
                   for r in ("scheduler", "api", "worker")}
    c.root.chmod(0o755)
    (c.root / "ranks.py").write_text(RANKS)
    (c.root / "intruder.py").write_text(INTRUDER)
    (c.root / "marks").mkdir(mode=0o777)
    (c.root / "marks").chmod(0o777)  # the ranks (the owner's uid) write there
    try:
        yield c.start()
    finally:
        c.close()
        redis.stop()
        for d in glob.glob("/tmp/gqr-*"):  # a failed test's (its workers killed): this range's uids only
            if first <= os.stat(d).st_uid < first + 50:
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def _seen(text: str) -> list[dict]:
    return sorted((json.loads(m) for m in re.findall(r"RANKSEEN (\{.*?\})", text)), key=lambda r: r["rank"])


def _uid_of(c: Cluster, job: str, user: str) -> int:
    logs_ = c.log("worker-n1") + c.log("worker-n2")
    m = re.search(rf"attempt {job}/1 started: .* as uid (\d+) \(user {user}\)", logs_)
    assert m, logs_[-3000:]
    return int(m.group(1))


def _procs_of(uid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, TypeError):
            continue
    return out


def _folders_of(uid: int) -> list[str]:
    return [d for d in glob.glob("/tmp/gqr-*") if os.path.isdir(d) and os.stat(d).st_uid == uid]


def _ranks_spec(c: Cluster) -> tuple[dict, Path]:
    """A two-node job of ``ranks.py`` (each rank notes itself in the marks file, then sleeps 600 s)
    and that file."""
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    marks = c.root / "marks" / "ranks.txt"
    return {"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
            "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
            "command": [py, str(c.root / "ranks.py"), "600", str(marks)]}, marks


def _both_up(c: Cluster, job: str, marks: Path) -> list[dict]:
    """Wait until both ranks of ``job`` noted themselves; fail with the job's and the workers' logs
    if it ends first."""
    root = c.client("root")

    def up() -> object:
        j = root.get(job)
        if j["state"] in ("failed", "succeeded", "cancelled"):
            raise AssertionError(f"{j['state']}: {j.get('error')}\n{logs(root.events(job))[-3000:]}\n"
                                 f"{c.log('worker-n1')[-2000:]}\n{c.log('worker-n2')[-2000:]}")
        seen = _seen(marks.read_text() if marks.exists() else "")
        return len(seen) == 2 and seen

    return wait_until(up, 300, 0.5, "both ranks up")


@needs_root
def test_nodes_2_ranks_run_as_the_owner_on_a_ray_of_the_jobs_own(cluster: Cluster) -> None:
    c = cluster
    spec, marks = _ranks_spec(c)
    py, env = spec["python"], spec["env"]
    root = c.client("root")
    job = c.client("alice").submit(spec)["id"]
    seen = _both_up(c, job, marks)
    alice = _uid_of(c, job, "alice")
    placement = root.get(job)["attempts"][-1]["placement"]
    assert {r["node"] for r in seen} == set(placement) == {"n1", "n2"}
    assert [r["uid"] for r in seen] == [alice, alice], (seen, alice)  # before: the Ray nodes' user
    assert len(_folders_of(alice)) == 2  # one private folder per node
    # the launcher connected once its head said it was up (raynodes.HEAD_STARTED), not on a guess
    assert "did not say" not in logs(root.events(job)), logs(root.events(job))[-3000:]

    # another user's job given the head's address: refused for the token
    r = redislib.Redis.from_url(c.redis.url, decode_responses=True)
    address = r.get(f"gq:rayhead:{job}:1")
    assert address
    bob = c.client("bob").submit({"kind": "command", "gpus": 0, "retries": 0, "python": py, "env": env,
                                  "command": [py, str(c.root / "intruder.py"), address]})["id"]
    c.wait_done([bob], 120)
    said = logs(root.events(bob))
    assert "INTRUDER-REFUSED" in said and "INTRUDER-IN" not in said, said[-3000:]
    assert "InvalidAuthToken" in said, said[-3000:]  # refused for the token, not for want of Ray

    # every other port the job's Ray listens on (both nodes): another user's job gets nothing
    # without the token (an HTTP 401, or a gRPC call refused for the token)
    _every_port_refuses(c, alice, address, {"python": py, "env": env})

    # the token is nowhere but in the owner's files
    token = hmac.new(r.get("gq:ray-secret").encode(), f"ray:{job}:1".encode(), hashlib.sha256).hexdigest()
    for p in psutil.process_iter():
        try:
            assert token not in " ".join(p.cmdline()), p
        except psutil.Error:
            pass
    assert token not in json.dumps(root.get(job)) + json.dumps(root.events(job))
    assert token not in c.log("worker-n1") + c.log("worker-n2") + c.log("daemon")
    for key in r.scan_iter("gq:*"):
        if r.type(key) == "string" and key != "gq:ray-secret":
            raw = r.get(key)
            assert raw is None or token not in raw, key
    assert all(stat.st_mode & 0o077 == 0 for stat in (os.stat(os.path.join(d, "token")) for d in _folders_of(alice)))

    # cancel: no process of alice's uid, no private folder left
    root.cancel(job)
    assert c.wait_done([job], 60)[job]["state"] == "cancelled"
    try:
        wait_until(lambda: not _procs_of(alice) and not _folders_of(alice) and r.get(f"gq:rayhead:{job}:1") is None,
                   60, 0.5, "no process of the owner's uid, no private folder, no head address")
    except AssertionError:
        left = [(p.pid, " ".join(p.cmdline())[:200]) for p in _procs_of(alice)]
        raise AssertionError((left, _folders_of(alice), r.get(f"gq:rayhead:{job}:1"), c.log("worker-n1")[-1500:],
                              c.log("worker-n2")[-1500:])) from None

    # a node of the gang lost (the second node's worker killed -9, alone): the gang is requeued;
    # no process of the job's Ray is left on either node; the next worker there removes the folder
    marks.unlink()
    gang = c.client("alice").submit(spec)["id"]
    _both_up(c, gang, marks)
    head = root.get(gang)["attempts"][-1]["node"]
    other = "n2" if head == "n1" else "n1"
    folders = _folders_of(alice)
    c.kill(f"worker-{other}")
    wait_until(lambda: root.get(gang)["attempts"][0]["outcome"] == "lost", 30, 0.2, "the gang's attempt lost")
    root.cancel(gang)
    wait_until(lambda: not _procs_of(alice), 60, 0.5, "no process of the owner's uid")
    c.start_worker(other)
    wait_until(lambda: not any(os.path.exists(f) for f in folders), 30, 0.5, "no private folder")


@needs_root
@pytest.mark.parametrize("ray", ["installed", "floor"])
def test_a_running_jobs_ray_head_that_dies_fails_the_job_at_once_and_leaves_nothing(cluster: Cluster, ray: str) -> None:
    """The raylet of the job's Ray head killed while both ranks run (as the OOM killer would):
    the job fails within a minute, its error names the rank and the node it was lost on, and no
    process or folder of the job is left on either node. With the environment's Ray, and with the
    oldest the project supports (pyproject.toml's floor) first on the job's PYTHONPATH: its nodes
    start, join and run the ranks, and their loss is seen, as with the newest."""
    c = cluster
    spec, marks = _ranks_spec(c)
    if ray == "floor":
        spec["env"]["PYTHONPATH"] = ray_first(floor_ray(), spec["env"]["PYTHONPATH"])
    root = c.client("root")
    job = c.client("alice").submit(spec)["id"]
    _both_up(c, job, marks)
    uid = _uid_of(c, job, "alice")
    first = root.get(job)["attempts"][-1]["node"]
    starts = [p for p in _procs_of(uid) if "--head" in p.cmdline() and "ray.scripts.scripts" in p.cmdline()]
    assert len(starts) == 1, starts
    raylets = [p for p in starts[0].children(recursive=True) if p.name() == "raylet"]
    assert len(raylets) == 1, raylets
    joined = [p for p in _procs_of(uid) if p.name() == "raylet"]
    assert len(joined) == 2 and all(p.exe().startswith(str(FLOOR_RAY)) == (ray == "floor") for p in joined), \
        [p.exe() for p in joined]  # both nodes' raylets are of that Ray
    raylets[0].kill()
    j = c.wait_done([job], 60)[job]
    assert j["state"] == "failed", j
    assert re.match(rf"rank 0 failed: lost its Ray worker on {first} \(the job's Ray there ended, or that worker "
                    r"died\): The actor \w+ is unavailable", j["error"]), j["error"]
    wait_until(lambda: not _procs_of(uid) and not _folders_of(uid), 60, 0.5, "no process or folder of the owner")


@needs_root
def test_a_job_whose_ray_has_no_token_auth_is_refused_before_any_ray_starts(cluster: Cluster) -> None:
    """A Ray older than 2.52 ignores RAY_AUTH_MODE=token and runs code for whoever reaches its
    ports, as the job's owner; a job whose Python has one (here Ray 2.51.2 first on its
    PYTHONPATH) fails with why and the fix, and no Ray of it ever runs, on either node."""
    c = cluster
    spec, marks = _ranks_spec(c)
    spec["env"]["PYTHONPATH"] = ray_first(OLD_RAY, spec["env"]["PYTHONPATH"])
    root = c.client("root")
    job = c.client("alice").submit(spec)["id"]
    j = c.wait_done([job], 120)[job]
    said = logs(root.events(job))
    assert j["state"] == "failed", (j, said[-3000:])
    assert "the job's Python has Ray 2.51.2, which has no token authentication (Ray 2.52 and later)" in said, said
    assert "Install 'ray[train]>=2.52' where the job runs" in j["error"], j["error"]
    assert not marks.exists()  # no rank ran
    uid = _uid_of(c, job, "alice")
    assert "ray-head.log" not in said and "Ray runtime started" not in said
    # the other node's join waited for a head that never came, and stopped with the attempt
    wait_until(lambda: not _procs_of(uid) and not _folders_of(uid), 60, 0.5, "no process or folder of the owner")
    assert "joined its Ray" not in c.log("worker-n1") + c.log("worker-n2")


# what the head's dashboard process (with Ray's dashboard packages) tells anyone: its own CPU,
# memory and event loop (docs/deploy.md, "What a hostile job can still do on a node")
DASHBOARD_OWN = ("ray_dashboard_", "ray_component_")


def _listening(uid: int) -> list[str]:
    """The TCP addresses the processes of ``uid`` listen on (any address: at 127.0.0.1)."""
    pids = {p.pid for p in _procs_of(uid)}
    out = set()
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            ip = conn.laddr.ip.removeprefix("::ffff:")
            out.add(f"{'127.0.0.1' if ip in ('0.0.0.0', '::') else ip}:{conn.laddr.port}")
    return sorted(out)


def _every_port_refuses(c: Cluster, uid: int, head: str, spec: dict) -> None:
    """Bob's job probes each port the owner's Ray listens on (tests/cluster/ray_port_probe.py):
    no HTTP path but Ray's health checks answers without the token, no gRPC call goes through,
    and the gRPC servers say why (the token)."""
    from .ray_port_probe import HEALTH

    ports = _listening(uid)
    assert head in ports, (head, ports)
    shutil.copy(Path(__file__).with_name("ray_port_probe.py"), c.root / "ray_port_probe.py")
    root = c.client("root")
    job = c.client("bob").submit(dict(spec, kind="command", gpus=0, retries=0,
                                      command=[spec["python"], str(c.root / "ray_port_probe.py"), *ports]))["id"]
    c.wait_done([job], 120)
    said = logs(root.events(job))
    found = [json.loads(m) for m in re.findall(r"PORTPROBE (\{.*\})", said)]
    assert [f["address"] for f in found] == ports, said[-3000:]
    refused = []
    for f in found:
        opened = {p: line for p, line in f["http"].items()
                  if line and p not in HEALTH and " 401 " not in line and " 403 " not in line}
        if opened and f.get("metrics") and all(m.startswith(DASHBOARD_OWN) for m in f["metrics"]):
            continue  # the dashboard process's own metrics (44227, ray[default] only: docs/deploy.md)
        assert not opened, (f["address"], opened, f.get("metrics"))  # before: the autoscaler's metrics
        calls = f.get("grpc") or {}
        assert "answered" not in calls.values(), (f["address"], calls)
        if "unauthenticated" in calls.values() or any(" 401 " in (line or "") for line in f["http"].values()):
            refused.append(f["address"])
    assert head in refused and len(refused) >= len(ports) - 2, (refused, found)  # a worker may end meanwhile


def test_a_node_that_does_not_join_fails_the_attempt_with_a_message_and_the_head_ends(tmp_path: Path) -> None:
    """The launcher's side alone (this test's own user): its head starts, the gang's other node
    never joins; after the wait the launcher says which node did not join, and its head is gone."""
    folder = Path(tempfile.mkdtemp(prefix="gqr-", dir="/tmp"))
    try:
        (folder / "token").write_text(os.urandom(32).hex())
        env = dict(os.environ, GPUQUEUE_RAY_HEAD=f"127.0.0.1:{free_port()}", GPUQUEUE_RAY_DIR=str(folder),
                   RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(folder / "token"), RAY_USAGE_STATS_ENABLED="0",
                   GPUQUEUE_RAY_JOIN_WAIT_S="3", PYTHONPATH=os.pathsep.join(sys.path))
        env.pop("RAY_ADDRESS", None)
        probe = ("import sys; from gpuqueue.job.raynodes import run_pinned; "
                 "sys.exit(run_pinned({'n1': [0], 'n9': [0]}, ['true'], None))")
        p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 1, p.stderr[-2000:]
        assert "gpuqueue: the Ray node of n9 did not join the job's Ray in 3 s (the worker log of n9 says why)" \
            in p.stderr, p.stderr[-2000:]
        assert "Traceback" not in p.stderr, p.stderr[-2000:]
        mark = f"GPUQUEUE_RAY_DIR={folder}".encode()

        def marked() -> list[int]:
            out = []
            for pid in psutil.pids():
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if mark in f.read().split(b"\0"):
                            out.append(pid)
                except OSError:
                    continue
            return out

        wait_until(lambda: not marked(), 30, 0.5, "the job's Ray head and its processes ended")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _agent_of(start: psutil.Process) -> Optional[psutil.Process]:
    """The dashboard agent under a ``ray start`` process (not the raylet, whose command line names
    the agent's too)."""
    for p in start.children(recursive=True):
        try:
            argv = p.cmdline()
            if argv and "raylet" not in argv[0] and any(a.endswith("dashboard/agent.py") for a in argv):
                return p
        except psutil.Error:
            continue
    return None


@needs_root
def test_a_nodes_ray_whose_agent_is_late_at_start_is_started_again_and_the_job_runs(cluster: Cluster) -> None:
    """Ray's raylet waits at most 15 s for its dashboard agent's port file and dies when the agent
    is late, as it is on a loaded node (this project's CI: 'Timed out waiting for file
    .../dashboard_agent_listen_port_...'). The first agent of each node's Ray (the head's and the
    join's) is held stopped: each is started again, the owner reads why in the job's log, and both
    ranks run."""
    c = cluster
    spec, marks = _ranks_spec(c)
    root = c.client("root")
    job = c.client("alice").submit(spec)["id"]
    alice = wait_until(lambda: re.search(rf"attempt {job}/1 started: .* as uid (\d+)", c.log("worker-n1") +
                                         c.log("worker-n2")), 60, 0.2, "the attempt started")
    uid = int(alice.group(1))
    held: dict[str, psutil.Process] = {}

    def late_agents() -> bool:
        for p in _procs_of(uid):
            try:
                argv = p.cmdline()
            except psutil.Error:
                continue
            role = next((r for r in ("--head", "--address") if r in argv), None)
            if "ray.scripts.scripts" in argv and role and role not in held:
                agent = _agent_of(p)
                if agent is not None:
                    agent.suspend()
                    held[role] = agent
        return len(held) == 2

    try:
        wait_until(late_agents, 120, 0.05, "the dashboard agent of each node's Ray")
        _both_up(c, job, marks)
    finally:
        for agent in held.values():
            try:
                agent.kill()
            except psutil.Error:
                pass
    # each started again as soon as its raylet died (gpuqueue.job.rayletwatch), not once ray start gave up
    note = "starting it again (an agent of Ray late at start, on a loaded node, ends its raylet)"
    said = logs(root.events(job))
    assert f"the job's Ray head exited at start (its raylet ended); {note}" in said, said[-3000:]
    join = next(n for n in ("n1", "n2") if n != root.get(job)["attempts"][-1]["node"])
    warned = [e["data"] for e in root.events(job) if e["type"] == "warning"]
    assert {"node": join, "message": f"on node {join} the job's Ray exited at start (its raylet ended); {note}"} \
        in warned, warned
    # its first ray start was joining the head started again: ended as soon as that head was gone
    assert {"node": join, "message": f"on node {join} the job's Ray exited at start (the head it was joining is "
            f"gone); {note}"} in warned, warned
    assert re.search(rf"attempt {job}/1: its Ray on this node exited at start \(its raylet ended\) before the job's "
                     rf"ranks ran; {re.escape(note)}", c.log(f"worker-{join}")), c.log(f"worker-{join}")[-3000:]
    root.cancel(job)
    assert c.wait_done([job], 60)[job]["state"] == "cancelled"
    wait_until(lambda: not _procs_of(uid), 60, 0.5, "no process of the owner's uid")
