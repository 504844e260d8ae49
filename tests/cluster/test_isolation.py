"""Isolation between users in cluster mode, tried as a hostile user would, with real processes:
redis-server with passwords (one ACL user per process), the scheduler, the API, two Celery
workers running as root. Alice's job looks for the store's credentials and bob's files
everywhere it can, and tries to change bob's job; bob then fetches his results."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.job.payload import build_payload, unpack_results
from helpers.servers import RedisServer, wait_until

from .conftest import TOKENS, Cluster, assert_private_tmp, outside_tmp, shipped_acl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

PASSWORDS = {role: f"{role}-pw-{os.urandom(6).hex()}" for role in ("admin", "scheduler", "api", "worker")}


def _others_may_run(path: str) -> bool:
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in [*p.parents, p])


def job_python() -> tuple[str, str]:
    """An interpreter of this Python version that other uids may run, and a PYTHONPATH with this
    environment's packages (readable by others); skip the test if there is none."""
    candidates = [sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"]
    py = next((c for c in candidates if os.path.exists(c) and _others_may_run(c)), None)
    libs = [p for p in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])]
    if py is None or not all(_others_may_run(p) for p in libs):
        pytest.skip("no Python interpreter and packages here that other uids may run")
    return py, os.pathsep.join(libs)


PROBE = r'''
import glob, json, os, socket
from gpuqueue.job import channel
T = json.loads(TARGETS)
me = os.environ["GPUQUEUE_ATTEMPT_DIR"]
report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "env": dict(os.environ),
          "read": {}, "wrote": [], "made": [], "redis": ""}

def look(p):
    try:
        with open(p, "rb") as f:
            report["read"][p] = f.read(65536).decode("utf-8", "replace")
    except OSError:
        pass

for p in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    look(p)
for root in T["roots"]:
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            look(os.path.join(dirpath, f))
for p in T["bob_files"] + T["files"]:
    look(p)
for p in T["bob_files"] + [r.format(job=os.environ["GPUQUEUE_JOB_ID"]) for r in T["records"]]:
    try:
        with open(p, "ab") as f:
            f.write(b"forged\n")
        report["wrote"].append(p)
    except OSError:
        pass
for d in T["bob_dirs"]:
    try:
        os.makedirs(os.path.join(d, "checkpoints", "default", "step-000000009"))
        report["made"].append(d)
    except OSError:
        pass
s = socket.create_connection(("127.0.0.1", T["redis_port"]))
key = "gq:result:" + T["bob_job"]
s.sendall(("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$6\r\nforged\r\n" % (len(key), key)).encode())
report["redis"] = s.recv(200).decode()
for t in ("exit", "runner", "state", "log"):
    channel.emit(t, {"forged": True, "exit_code": 0})
channel.emit("checkpoint", {"step": 9, "path": T["bob_dirs"][0] + "/checkpoints/default/step-000000009"})
with open(os.path.join(me, "events.jsonl"), "a") as f:
    f.write(json.dumps({"type": "exit", "data": {"forged": True, "exit_code": 0}}) + "\n")
    f.write(json.dumps({"type": "metrics", "data": {"step": 1, "from_file": 1}}) + "\n")
with open(os.path.join(me, "report.json"), "w") as f:
    json.dump(report, f)
os.symlink(T["steal"], os.path.join(me, "result.pkl"))  # "results": the worker's store URL file
os._exit(0)
'''

BOB = '''
import os, time
time.sleep(4)
x = 6 * 7
who = (os.getuid(), os.getgid(), os.getgroups())
'''


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    root = outside_tmp("gq-isolation-")  # 0711: job identities may traverse it, as /var/lib: the modes inside must hold
    (root / "redis").mkdir(mode=0o700)  # its data files hold every job's payload and results
    redis = RedisServer(root / "redis", password=PASSWORDS["admin"], conf=shipped_acl({r: PASSWORDS[r] for r in ("scheduler", "api", "worker")})).start()
    c = Cluster(root / "cluster", redis, {"n1": 1, "n2": 1}, worker_args=())
    c.root.chmod(0o755)  # listable: the job walks it and opens what it can (logs: yes; secrets: no)
    c.users.chmod(0o600)
    c.role_urls = {r: f"redis://gpuqueue-{r}:{PASSWORDS[r]}@127.0.0.1:{redis.port}/0" for r in ("scheduler", "api", "worker")}
    c.redis_file_for = {"worker-n2"}
    try:
        c.start()
        assert_private_tmp(c)  # each job's /tmp its own, as where the unit ships
        yield c
    finally:
        c.close()
        redis.kill()
        shutil.rmtree(root, ignore_errors=True)


def _cell(c: Cluster, user: str, source: str, outputs: list[str], py: str, path: str) -> str:
    payload, inputs, outs = build_payload(source, {}, inputs=[], outputs=outputs)
    spec = {"kind": "cell", "gpus": 1, "retries": 0, "python": py, "env": {"PYTHONPATH": path}, "inputs": inputs, "outputs": outs}
    return c.client(user).submit(spec, payload)["id"]


def _secrets() -> list[str]:
    return list(PASSWORDS.values()) + list(TOKENS.values())


def test_a_job_reaches_no_credential_nor_another_users_files(cluster: Cluster) -> None:
    c = cluster
    py, path = job_python()
    nodes = [c.root / f"node-{n}" for n in c.nodes]
    bob = _cell(c, "bob", BOB, ["x", "who"], py, path)
    wait_until(lambda: c.client("bob").get(bob)["state"] == "running", 30, 0.1, "bob's job to run")
    targets = {
        "roots": [str(c.root)],
        "bob_job": bob,
        "bob_dirs": [str(n / "work" / bob) for n in nodes],
        "bob_files": [str(n / "work" / bob / f) for n in nodes
                      for f in ("payload.pkl", "attempt-1/result.pkl", "attempt-1/events.jsonl")]
                     + [str(n / "jobs" / bob / "attempt-1" / f) for n in nodes for f in ("events.jsonl", "exit.json")],
        "records": [str(n / "jobs" / "{job}" / "attempt-1" / f) for n in nodes for f in ("events.jsonl", "exit.json")],
        "files": [str(c.redis.root / "redis.conf"), str(c.users), str(c.root / "worker-n2.redis-url")]
                 + [str(p) for p in c.redis.root.glob("appendonlydir/*")],
        "redis_port": c.redis.port,
        "steal": str(c.root / "worker-n2.redis-url"),
    }
    alice = _cell(c, "alice", f"TARGETS = {json.dumps(json.dumps(targets))}\n{PROBE}", [], py, path)
    jobs = c.wait_done([bob, alice], 60)
    anode = c.root / f"node-{jobs[alice]['attempts'][-1]['node']}"
    report = json.loads((anode / "work" / alice / "attempt-1" / "report.json").read_text())
    seen = json.dumps(report)

    # no credential anywhere the job could look: its environment, /proc, the files it could open
    assert [s for s in _secrets() if s in seen] == []
    assert not any(k.startswith(("GPUQUEUE_REDIS", "GPUQUEUE_TOKEN", "JPY_")) for k in report["env"])
    assert not any(p.endswith((".redis-url", "redis.conf", "users.toml")) or "appendonly" in p for p in report["read"])
    assert any(p.endswith("daemon.log") for p in report["read"])  # it did look (the logs may be read)
    # ... nor any file of bob's, and it could change none of them, nor its own records
    assert jobs[bob]["state"] == "succeeded", c.client("bob").events(bob)[-5:]
    bob_uid, bob_gid, bob_groups = _bob_values(c, bob)["who"]
    assert report["uid"] != bob_uid and report["uid"] != 0 and report["groups"] == [] and bob_groups == []
    assert [p for p in report["read"] if bob in p] == []
    home = Path(report["env"]["HOME"])  # its own, on the node
    assert home.name == str(report["uid"]) and (os.stat(home).st_uid, stat.S_IMODE(os.stat(home).st_mode)) == (report["uid"], 0o700)
    assert report["wrote"] == [] and report["made"] == []
    assert report["redis"].startswith("-NOAUTH"), report["redis"]
    bnode = c.root / f"node-{jobs[bob]['attempts'][-1]['node']}"
    for d, uid in ((bnode / "work" / bob, bob_uid), (bnode / "work" / bob / "attempt-1", bob_uid), (bnode / "jobs" / bob, 0)):
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (uid, 0o700), d

    # what alice's job forged did not become records: no exit, state, runner or log of its own;
    # a checkpoint record naming bob's folder is marked as outside its own
    evs = c.client("alice").events(alice)
    assert [e for e in evs if e["data"].get("forged")] == []
    assert {"step": 1, "from_file": 1}.items() <= next(e["data"] for e in evs if e["type"] == "metrics").items()
    assert [e["data"]["in_job_folder"] for e in evs if e["type"] == "checkpoint"] == [False]
    # its "results" (a link to the worker's URL file) were not taken
    try:
        blob = c.client("alice").result(alice)
    except GPUQueueError:
        blob = b""
    assert not any(s.encode() in blob for s in _secrets())

    # bob's kernel fetches bob's own values
    assert _bob_values(c, bob)["x"] == 42
    # and no log of any process holds a secret
    for log in c.root.glob("*.log"):
        assert [s for s in _secrets() if s in log.read_text(errors="replace")] == [], log


def _bob_values(c: Cluster, job: str) -> dict[str, Any]:
    values, failed = unpack_results(c.client("bob").result(job))
    assert failed == {}
    return values


def test_a_root_worker_refuses_a_state_folder_its_jobs_cannot_reach(tmp_path: Path) -> None:
    import subprocess

    r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "worker", "--redis", "redis://127.0.0.1:1/0", "--gpus", "1",
                        "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "use a --state-dir every user may traverse" in r.stderr, r.stderr


def test_a_root_worker_refuses_a_state_folder_another_user_could_change() -> None:
    """The worker makes, chowns and enters each job's folders in its state folder as root: one
    that another user made first (a --state-dir under /tmp, say), or one that others or a
    group other than root's may write, is one where that user could rename what the worker made
    and put a link in its place (<state>/home -> /root: the worker made it mode 711). Refused at
    start; a folder in a sticky /tmp that only root may change is not."""
    import subprocess

    top = Path(tempfile.mkdtemp(prefix="gq-state-"))  # in /tmp: mode 1777, sticky
    try:
        top.chmod(0o755)
        cases = {"taken": (65534, 0o755, "belongs to uid 65534"), "open": (0, 0o777, "is mode 0777"),
                 "group": (0, 0o775, "is mode 0775 (group 100)"), "fine": (0, 0o755, None)}
        for name, (uid, mode, why) in cases.items():
            state = top / name
            state.mkdir()
            os.chown(state, uid, 100 if name == "group" else 0)
            state.chmod(mode)
            r = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "worker", "--redis", "redis://127.0.0.1:1/0",
                                "--gpus", "1", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
            if why is None:
                assert "only root may change" not in r.stderr, r.stderr
                assert "cannot reach Redis" in r.stderr, r.stderr  # it went on
            else:
                assert r.returncode == 2 and f"{state} {why}" in r.stderr, (name, r.stderr)
                assert "use a --state-dir that only root may change" in r.stderr, r.stderr
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_python_the_jobs_uid_cannot_run_fails_at_once_naming_uid_and_fix(cluster: Cluster) -> None:
    """The job's interpreter is root's own (mode 700): its attempt cannot start as the owner's
    uid, and no retry would change that. The job fails at its first attempt, saying which file,
    which uid and what to do (it spent its 3 retries, then said 'exited with code 127')."""
    c = cluster
    private = c.root / "private-python"
    private.write_text("#!/bin/sh\nexec python3 \"$@\"\n")
    private.chmod(0o700)
    payload, inputs, outs = build_payload("x = 1", {}, inputs=[], outputs=["x"])
    spec = {"kind": "cell", "gpus": 1, "retries": 3, "python": str(private), "inputs": inputs, "outputs": outs}
    job_id = c.client("alice").submit(spec, payload)["id"]
    job = c.wait_done([job_id], 60)[job_id]
    assert job["state"] == "failed", job
    assert [a["outcome"] for a in job["attempts"]] == ["cannot_start"], job["attempts"]
    node, uid = job["attempts"][0]["node"], os.stat(c.root / f"node-{job['attempts'][0]['node']}" / "work" / job_id).st_uid
    assert job["error"] == (f"the job could not start on node {node}: {private} is not executable by uid {uid} "
                            f"(user alice): make it executable by that user (chmod a+rx, and a+x on its folders), "
                            f"or ask your admin to"), job["error"]
