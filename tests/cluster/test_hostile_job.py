"""A hostile job, from inside: bob's job runs on the same node as alice's, both under their own
dynamic uids, started by a real Celery worker running as root, with a shared root for
checkpoints. Bob's job tries what untrusted code on a GPU node could try against alice's job and
against the root worker that handles his files: read or write alice's files, environment, pipes
and processes; plant links in his own folders that the root worker follows when it copies
checkpoints to and from the shared root, reads his results and errors, or deletes his folders.
Each attempt is recorded in a report (what the job saw); the test asserts what got through:
nothing (tests/cluster/test_isolation.py covers credentials and forged records of one's own)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from helpers.servers import RedisServer, wait_until
from training.jobs import logs

from .conftest import Cluster, assert_private_tmp, outside_tmp
from .test_isolation import job_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

SECRET = f"alice-secret-{os.urandom(6).hex()}"

ALICE = r'''
import json, os, sys, time
import gpuqueue
me = os.environ["GPUQUEUE_JOB_DIR"]
gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + "/w.txt", "w").write("ALICE-CKPT"))
with open(os.path.join(me, "secret.json"), "w") as f:
    json.dump({"type": "AliceSecret", "message": os.environ["ALICE_SECRET"]}, f)
with open("/tmp/gq-alice-" + os.environ["GPUQUEUE_JOB_ID"], "w") as f:
    f.write(os.environ["ALICE_SECRET"])
print("ready", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
print("alive at the end", flush=True)
'''

BOB = r'''
import ctypes, errno, json, os, signal, sys, time
import gpuqueue
from gpuqueue.job import channel
T = json.loads(os.environ["TARGETS"])
me, att = os.environ["GPUQUEUE_JOB_DIR"], os.environ["GPUQUEUE_ATTEMPT_DIR"]
report = {"uid": os.getuid(), "got": [], "blocked": {}}

def attempt(what, fn):
    try:
        out = fn()
        report["got"].append([what, repr(out)[:300]])
    except OSError as e:
        report["blocked"][what] = errno.errorcode.get(e.errno, str(e.errno))

def read(p):
    with open(p, "rb") as f:
        return f.read(4096)

def write(p):
    with open(p, "ab") as f:
        f.write(b'{"type": "metrics", "data": {"forged": 1}}\n')

libc = ctypes.CDLL("libc.so.6", use_errno=True)
def ptrace(pid):
    if libc.ptrace(16, pid, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), "ptrace")
    libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    return "attached"

if int(os.environ["GPUQUEUE_ATTEMPT"]) == 1:
    # alice's processes (found by uid, as anyone can: /proc/<pid>/status) and the root ones of gpuqueue
    alice, roots = [], []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            uid = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("Uid:")).split()[1])
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except (OSError, StopIteration):
            continue
        if uid == T["alice_uid"]:
            alice.append(int(pid))
        elif uid == 0 and b"gpuqueue" in cmd:
            roots.append(int(pid))
    report["alice_pids"], report["root_pids"] = alice, roots
    for pid in alice + roots:
        who = "alice" if pid in alice else "root"
        attempt(f"{who} {pid}: read environ", lambda: read(f"/proc/{pid}/environ"))
        attempt(f"{who} {pid}: read mem", lambda: read(f"/proc/{pid}/mem"))
        attempt(f"{who} {pid}: list fds", lambda: os.listdir(f"/proc/{pid}/fd"))
        attempt(f"{who} {pid}: cwd", lambda: os.readlink(f"/proc/{pid}/cwd"))
        for fd in range(3, 12):  # the event pipe and the runner's files, if reachable
            attempt(f"{who} {pid}: write fd {fd}", lambda: write(f"/proc/{pid}/fd/{fd}"))
        attempt(f"{who} {pid}: signal", lambda: os.kill(pid, signal.SIGCONT))
        attempt(f"{who} {pid}: signal group", lambda: os.killpg(os.getpgid(pid), signal.SIGCONT))
        attempt(f"{who} {pid}: ptrace", lambda: ptrace(pid))
    # alice's files, wherever they are
    a = T["alice_dir"]
    for p in [a + "/secret.json", a + "/checkpoints/default/step-000000001/w.txt", a + "/attempt-1/events.jsonl",
              *T["alice_tmp"]]:
        attempt(f"read {p}", lambda: read(p))
    for d in [a, a + "/checkpoints", T["alice_home"], T["shared"], T["shared"] + "/jobs", T["state"] + "/jobs",
              T["state"] + "/work"]:
        attempt(f"list {d}", lambda: os.listdir(d))
    for p in [a + "/attempt-1/events.jsonl", a + "/checkpoints/default/step-000000001/w.txt", a + "/planted"]:
        attempt(f"write {p}", lambda: write(p))
    attempt("hard link to alice's secret", lambda: os.link(a + "/secret.json", me + "/hard.json"))

    # links the root worker would follow: in a checkpoint it copies to the shared root...
    one = me + "/checkpoints/default/step-000000001"
    os.makedirs(one)
    open(one + "/w.txt", "w").write("BOB")
    os.symlink(a + "/secret.json", one + "/link.json")
    open(one + "/COMPLETE", "w").write(json.dumps({"step": 1, "metrics": {}, "time": time.time(), "files": []}))
    channel.emit("checkpoint", {"step": 1, "path": one})
    os.symlink(a + "/checkpoints/default/step-000000001", me + "/checkpoints/default/step-000000002")
    channel.emit("checkpoint", {"step": 2, "path": me + "/checkpoints/default/step-000000002"})
    # ... a good one, copied to the root; then its folder becomes a link into alice's checkpoints, so
    # that the next attempt's copy from the root would write there
    gpuqueue.Checkpointer(name="pull").save(3, writer=lambda d: open(d + "/w.txt", "w").write("BOB-3"))
    time.sleep(3)  # the worker's push after the checkpoint event
    os.rename(me + "/checkpoints/pull/step-000000003", me + "/gone-3")
    os.symlink(a + "/checkpoints/default", me + "/checkpoints/pull/step-000000003")
    # ... its error and results: alice's secret
    os.symlink(a + "/secret.json", att + "/error.json")
    os.symlink(a + "/secret.json", att + "/result.json")
    # ... and what the sweep deletes once bob's record is gone
    os.symlink(a, me + "/alice-folder")
    os.mkdir(me + "/deep")
    os.symlink(a + "/secret.json", me + "/deep/secret-link")
    with open(me + "/report.json", "w") as f:
        json.dump(report, f)
    sys.exit(1)
print("second attempt ran", flush=True)
'''


PLANT = r'''
import json, os, sys, time
d = os.path.join(sys.argv[1], "default", "step-999999999")
os.makedirs(d)
open(d + "/s.txt", "w").write("planted by bob")
open(d + "/COMPLETE", "w").write(json.dumps({"step": 999999999, "metrics": {}, "time": time.time(), "files": ["s.txt"]}))
for p in (os.path.join(sys.argv[1], "default"), d):
    os.chmod(p, 0o755)
for f in ("s.txt", "COMPLETE"):
    os.chmod(os.path.join(d, f), 0o644)
'''

RESUME = r'''
import gpuqueue
ck = gpuqueue.Checkpointer()
point = ck.resume_point()
print("resumed from", point.step if point else None, flush=True)
print("saved in", ck.save(1, writer=lambda d: open(d + "/s.txt", "w").write("alice")).path, flush=True)
'''


@pytest.fixture
def root() -> Iterator[Path]:
    root = outside_tmp("gq-hostile-job-")  # 0711: job identities may traverse it, as /var/lib
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_cluster(root: Path) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(nodes)``: a started cluster under ``root`` whose workers run as root (jobs
    under their users' dynamic uids) with a shared root; the scheduler forgets a finished job
    after 3 s and the workers then sweep its folders. The workers take this process's
    environment (a test sets the variables of "the workers' environment" before)."""
    made: list[tuple[Cluster, RedisServer]] = []

    def make(nodes: dict[str, int]) -> Cluster:
        redis = RedisServer(root / "redis", appendonly=True).start()
        c = Cluster(root / "cluster", redis, nodes, daemon_args=("--keep-finished", "3s"),
                    worker_args=("--shared-dir", str(root / "shared"), "--local-sweep", "0.5"))
        made.append((c, redis))
        c.root.chmod(0o755)
        for name, text in (("alice.py", ALICE), ("bob.py", BOB), ("plant.py", PLANT), ("resume.py", RESUME)):
            (c.root / name).write_text(text)
        c.start()
        assert_private_tmp(c)  # each job's /tmp its own, as where the unit ships
        return c

    yield make
    for c, redis in made:
        c.close()
        redis.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    return make_cluster({"n1": 2})


def _env(libs: str) -> dict[str, str]:
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    return {"PYTHONPATH": os.pathsep.join([backend, libs])}


def test_a_job_reaches_nothing_of_another_users_job_nor_makes_root_follow_its_links(cluster: Cluster) -> None:
    c = cluster
    py, libs = job_python()
    node = c.root / "node-n1"
    go = c.root / "alice-go"
    alice = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 0, "command": [py, str(c.root / "alice.py"), str(go)],
                                      "env": {**_env(libs), "ALICE_SECRET": SECRET}})["id"]
    wait_until(lambda: any(e["data"].get("line") == "ready" for e in c.client("alice").events(alice)), 60, 0.1,
               "alice's job to be ready")
    adir = node / "work" / alice
    auid = os.stat(adir).st_uid
    shared = c.root.parent / "shared"
    # what alice's job wrote in its /tmp: in her own folder on the node (her /tmp, where each job
    # has its own); bob tries it there, and by the name she used
    atmp = node / "tmp" / str(auid) / f"gq-alice-{alice}"
    targets = {"alice_uid": auid, "alice_dir": str(adir), "alice_tmp": [str(atmp), f"/tmp/gq-alice-{alice}"],
               "alice_home": str(node / "home" / str(auid)), "shared": str(shared), "state": str(node)}
    bob = c.client("bob").submit({"kind": "command", "gpus": 1, "retries": 1, "command": [py, str(c.root / "bob.py")],
                                  "env": {**_env(libs), "TARGETS": json.dumps(targets)}})["id"]
    rec = c.wait_done([bob], 90)[bob]
    bdir = node / "work" / bob
    assert (bdir / "report.json").exists(), (rec, logs(c.client("bob").events(bob)))
    report = json.loads((bdir / "report.json").read_text())
    bob_events = c.client("bob").events(bob)
    everything_bob_sees = json.dumps(rec) + json.dumps(bob_events) + json.dumps(report)

    # he found alice's processes and the root ones, and tried each: nothing got through
    assert report["uid"] not in (0, auid) and report["alice_pids"] and report["root_pids"], report
    assert report["got"] == [], report["got"]
    assert {report["blocked"][f"read {adir}/secret.json"], report["blocked"][f"write {adir}/planted"]} == {"EACCES"}
    assert report["blocked"][f"alice {report['alice_pids'][0]}: ptrace"] == "EPERM"
    assert report["blocked"][f"root {report['root_pids'][0]}: signal"] == "EPERM"
    assert SECRET not in everything_bob_sees
    # his first attempt failed with his own exit; no error of alice's became his; the second
    # attempt could not take back the checkpoint whose folder he had made a link
    assert [a["outcome"] for a in rec["attempts"]][0] == "failed", rec["attempts"]
    assert "AliceSecret" not in everything_bob_sees
    assert "second attempt ran" not in logs(bob_events)
    # the shared root holds bob's good checkpoint only: neither the one with a link nor the
    # linked folder (alice's checkpoint) were copied
    bob_root = shared / "jobs" / bob / "checkpoints"
    assert sorted(str(p.relative_to(bob_root)) for p in bob_root.glob("*/*")) == ["pull/step-000000003"]
    assert not any(b"ALICE" in p.read_bytes() for p in (shared / "jobs" / bob).rglob("*") if p.is_file())
    # alice's folder is as her job left it: the copy back from the root wrote nothing there
    assert sorted(p.name for p in (adir / "checkpoints" / "default").iterdir()) == ["step-000000001"]
    assert (adir / "checkpoints" / "default" / "step-000000001" / "w.txt").read_text() == "ALICE-CKPT"
    for p in adir.rglob("*"):  # every file of alice's job is hers, and closed to others
        st = os.lstat(p)
        assert st.st_uid == auid and not st.st_mode & 0o077, (p, oct(st.st_mode), st.st_uid)
    # the file alice's job left in its /tmp: hers, closed to others, and not in the node's /tmp
    # (where bob, as any user, could list it), nor in bob's
    assert (os.stat(atmp).st_uid, stat.S_IMODE(os.stat(atmp).st_mode)) == (auid, 0o600)
    assert report["blocked"][f"read {atmp}"] == "EACCES"
    assert report["blocked"][f"read /tmp/gq-alice-{alice}"] == "ENOENT"
    assert not os.path.lexists(f"/tmp/gq-alice-{alice}")

    # 3 s after bob's job ended its record goes, and the root worker deletes his folders: his
    # links go with them, alice's files stay
    wait_until(lambda: not bdir.exists(), 60, 0.2, "bob's folders swept")
    assert json.loads((adir / "secret.json").read_text())["message"] == SECRET
    assert (adir / "checkpoints" / "default" / "step-000000001" / "w.txt").exists()

    # alice's job saw nothing of it: it ends as it would have, and no record was forged in her stream
    go.touch()
    arec = c.wait_done([alice], 60)[alice]
    aevents = c.client("alice").events(alice)
    assert arec["state"] == "succeeded", logs(aevents)
    assert "alive at the end" in logs(aevents)
    assert not any("forged" in e["data"] for e in aevents)


def test_a_checkpoint_folder_of_the_workers_environment_is_no_folder_other_users_can_plant_in(
        root: Path, make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """``GPUQUEUE_CHECKPOINT_DIR`` was passed from the worker's environment to every job, and a
    Checkpointer with no folder of its own used it as is: every job of every user saved to, and
    resumed from, ``<dir>/default/``, which all their uids must be able to write. Bob's job put a
    checkpoint there; alice's next job resumed from it (for ``Checkpointer.load()``, a
    torch.load of bob's file in alice's process). A job under its own identity no longer takes
    it from the worker: its checkpoints are in its own job folder (and on the shared root)."""
    scratch = root / "scratch"
    scratch.mkdir()
    scratch.chmod(0o1777)  # what every job's uid must be able to write: as /tmp
    monkeypatch.setenv("GPUQUEUE_CHECKPOINT_DIR", str(scratch))  # the workers' environment
    c = make_cluster({"n1": 1})
    py, libs = job_python()
    bob = c.client("bob").submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                                  "command": [py, str(c.root / "plant.py"), str(scratch)]})["id"]
    assert c.wait_done([bob], 60)[bob]["state"] == "succeeded", logs(c.client("bob").events(bob))
    alice = c.client("alice").submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                                      "command": [py, str(c.root / "resume.py")]})["id"]
    rec = c.wait_done([alice], 60)[alice]
    out = logs(c.client("alice").events(alice))
    assert rec["state"] == "succeeded", out
    assert "resumed from None" in out, out
    saved = next(line.split(" ", 2)[2] for line in out.splitlines() if line.startswith("saved in "))
    assert saved.startswith(str(c.root / "node-n1" / "work" / alice / "checkpoints") + "/"), saved


RAY_SEEN = "import json, os; print('ray:', json.dumps({k: v for k, v in os.environ.items() if 'RAY' in k or k == 'GPUQUEUE_PLACEMENT'}), flush=True)"


def test_only_the_launcher_of_a_job_on_several_nodes_learns_where_the_ray_cluster_is(
        make_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers hold the Ray cluster's address for multi-node jobs; it was allow-listed, so
    every job on every node learned where to submit work that runs as the Ray nodes' user. Now a
    job under its own identity gets it only when the scheduler placed it on several nodes."""
    monkeypatch.setenv("RAY_ADDRESS", "10.9.8.7:6379")  # the workers' environment
    monkeypatch.setenv("GPUQUEUE_RAY_ADDRESS", "10.9.8.7:6379")
    c = make_cluster({"n1": 1, "n2": 1})
    py, libs = job_python()

    def seen(user: str, **spec: Any) -> dict[str, str]:
        job = c.client(user).submit({"kind": "command", "retries": 0, "env": _env(libs), "command": [py, "-c", RAY_SEEN],
                                     **spec})["id"]
        rec = c.wait_done([job], 60)[job]
        out = logs(c.client(user).events(job))
        assert rec["state"] == "succeeded", out
        return json.loads(next(line for line in out.splitlines() if line.startswith("ray: "))[5:])

    assert seen("bob", gpus=1) == {}
    assert seen("bob", gpus=0) == {}
    # the launcher of a job on both nodes (run as a plain command here: GPUQUEUE_LAUNCHER=none)
    both = seen("alice", gpus=2, nodes=2, env={**_env(libs), "GPUQUEUE_LAUNCHER": "none"})
    assert both["RAY_ADDRESS"] == both["GPUQUEUE_RAY_ADDRESS"] == "10.9.8.7:6379", both
    assert set(json.loads(both["GPUQUEUE_PLACEMENT"])) == {"n1", "n2"}


SPARSE = r'''
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop notice is ignored: the runner's SIGKILL must come
with open(os.environ["GPUQUEUE_ATTEMPT_DIR"] + "/events.jsonl", "r+b") as f:
    f.truncate(10**12)  # 1 TB of zeros that take no disk: no line in it
print("big", flush=True)
while True:
    time.sleep(1)
'''


def test_a_job_cannot_keep_its_runner_from_stopping_it(cluster: Cluster) -> None:
    """The runner copies the job's own events.jsonl (where ranks without its pipe write) in its
    main loop, which also answers stop requests and kills the job after the grace period. It read
    the file to its end at each pass: a job that made it a 1 TB sparse file kept its runner
    reading zeros for about an hour (0.3 GB/s here), so a cancel, a preemption or a time limit
    did not stop it, and it kept its GPUs. Each pass now reads a few MB, and an attempt's file is
    read no further than its output limit."""
    c = cluster
    py, libs = job_python()
    (c.root / "sparse.py").write_text(SPARSE)
    bob = c.client("bob").submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                                  "command": [py, str(c.root / "sparse.py")]})["id"]
    wait_until(lambda: "big" in logs(c.client("bob").events(bob)), 60, 0.2, "bob's job to make its file")
    time.sleep(1)  # the runner is on it
    c.client("bob").cancel(bob)
    rec = c.wait_done([bob], 30)[bob]
    assert rec["state"] == "cancelled", rec
    assert rec["attempts"][-1]["ended_at"] - rec["attempts"][-1]["started_at"] < 30


LEAVES = r'''
import os, subprocess, sys
# a process in a session of its own keeps the job's stdout and stderr open after its main process ends
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6)"], start_new_session=True)
print("main", os.getpid(), flush=True)
'''


def _take_pid(pid: int, uid: int) -> "Any":
    """A process of ``uid`` that leads a session (and process group) of its own, with pid
    ``pid`` if the kernel gives it (root sets the pid namespace's last pid), else None."""
    import subprocess

    for _ in range(20):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(["sleep", "60"], start_new_session=True, user=uid, group=uid)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


def test_a_job_cannot_make_its_runner_kill_a_process_that_took_its_pid(cluster: Cluster) -> None:
    """After a job's main process ends, its runner waits for its output pipes to close (up to 5 s
    each), then SIGKILLs the job's process group (its pid) so that no child of it keeps its GPUs.
    The runner had already reaped the main process, so its pid was free: a job whose child held
    the pipes open (in a session of its own) left the runner, as root, killing whatever process
    group took that pid meanwhile: another user's job, a spare runner. The main process now stays
    unreaped (a zombie holds its pid and group) until that kill is sent."""
    c = cluster
    py, libs = job_python()
    (c.root / "leaves.py").write_text(LEAVES)
    bob = c.client("bob").submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                                  "command": [py, str(c.root / "leaves.py")]})["id"]
    line = wait_until(lambda: next((x for x in logs(c.client("bob").events(bob)).splitlines() if x.startswith("main ")), None),
                      60, 0.05, "bob's job to start")
    pid = int(line.split()[1])
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", 10, 0.02, "bob's main process to end")
    victim = None
    if os.path.exists(f"/proc/{pid}"):  # a zombie until the runner's last kill: no one can take its pid
        assert _state(pid) == "Z" and _take_pid(pid, 61999) is None
    else:  # reaped already: its pid is free (the runner's old way)
        victim = _take_pid(pid, 61999)  # "alice's next job", say
        if victim is None:
            pytest.skip(f"pid {pid} went to another process first")
    try:
        rec = c.wait_done([bob], 60)[bob]
        assert rec["state"] == "succeeded", logs(c.client("bob").events(bob))
        if victim is not None:
            time.sleep(0.5)
            assert victim.poll() is None, f"the process that took pid {pid} was killed ({victim.returncode})"
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


NESTED_EVENT = r'''
import os, time
deep = "[" * 100_000 + "]" * 100_000
with open(os.environ["GPUQUEUE_ATTEMPT_DIR"] + "/events.jsonl", "a") as f:  # as a rank without the pipe does
    f.write('{"type": "metrics", "data": {"x": ' + deep + '}}\n')
print("sent", flush=True)
time.sleep(1000)
'''
NESTED_ERROR = r'''
import os, sys
with open(os.environ["GPUQUEUE_ATTEMPT_DIR"] + "/error.json", "w") as f:
    f.write('{"type": "E", "message": ' + "[" * 100_000 + "]" * 100_000 + '}')
sys.exit(1)
'''


def _uid_procs(uid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]


def test_a_deeply_nested_record_neither_ends_the_runner_nor_stalls_the_worker(cluster: Cluster) -> None:
    """Python's json raises RecursionError (not ValueError) on a document nested some thousand
    levels deep. The runner parsed the job's own events.jsonl in its main loop catching
    ValueError only: one such line ended the runner, and with it the queue's hold on the job,
    whose process went on running (its GPUs given to the next job) and could no longer be
    cancelled. The worker read error.json the same way: the attempt's end was never reported
    (its GPUs held for good) while the worker logged the error 50 times a second."""
    c = cluster
    py, libs = job_python()
    (c.root / "nested_event.py").write_text(NESTED_EVENT)
    (c.root / "nested_error.py").write_text(NESTED_ERROR)
    bob = c.client("bob")
    job = bob.submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                      "command": [py, str(c.root / "nested_event.py")]})["id"]
    wait_until(lambda: "sent" in logs(bob.events(job)), 60, 0.2, "bob's job to write the line")
    uid = os.stat(c.root / "node-n1" / "work" / job).st_uid
    time.sleep(1)  # the runner has read it
    assert bob.get(job)["state"] == "running", logs(bob.events(job))
    bob.cancel(job)
    assert c.wait_done([job], 30)[job]["state"] == "cancelled"
    wait_until(lambda: _uid_procs(uid) == [], 10, 0.1, "no process of bob's left")
    job = bob.submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                      "command": [py, str(c.root / "nested_error.py")]})["id"]
    rec = c.wait_done([job], 30)[job]
    assert rec["state"] == "failed" and "exited with code 1" in rec["error"], rec["error"]


NUL_PATH = r'''
import os, time
with open(os.environ["GPUQUEUE_ATTEMPT_DIR"] + "/events.jsonl", "a") as f:  # as a rank without the pipe does
    f.write('{"type": "checkpoint", "data": {"step": 1, "path": "/tmp/a\\u0000b"}}\n')
    f.write('{"type": "metrics", "data": {"after": 1}}\n')
print("sent", flush=True)
time.sleep(1000)
'''


def test_a_checkpoint_record_naming_an_impossible_path_neither_ends_the_runner_nor_is_lost(cluster: Cluster) -> None:
    """The runner resolves a checkpoint record's path (is it in the job's folder?); a path
    holding a NUL byte made that raise ValueError in its main loop, which read the job's own
    events.jsonl: the runner ended, and the job's process ran on out of the queue's hold."""
    c = cluster
    py, libs = job_python()
    (c.root / "nul_path.py").write_text(NUL_PATH)
    bob = c.client("bob")
    job = bob.submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                      "command": [py, str(c.root / "nul_path.py")]})["id"]
    wait_until(lambda: any(e["type"] == "metrics" for e in bob.events(job)), 30, 0.2, "the record after it")
    uid = os.stat(c.root / "node-n1" / "work" / job).st_uid
    ck = [e["data"] for e in bob.events(job) if e["type"] == "checkpoint"]
    assert ck and ck[0]["in_job_folder"] is False, ck
    time.sleep(1)
    assert bob.get(job)["state"] == "running", logs(bob.events(job))
    bob.cancel(job)
    assert c.wait_done([job], 30)[job]["state"] == "cancelled"
    wait_until(lambda: _uid_procs(uid) == [], 10, 0.1, "no process of bob's left")


NO_NEWLINE = r'''
import os, sys
chunk = b"x" * (1 << 20)
for _ in range(300):  # 300 MB of one line, never ended
    os.write(1, chunk)
os.write(1, b"\nend\n")
'''


def _rss_mb(pid: int) -> float:
    try:
        return next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if x.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def test_a_line_without_end_does_not_grow_the_runner(cluster: Cluster) -> None:
    """The runner (root, no memory limit) kept a job's output line in memory until its newline,
    appending each 64 KB read to it and searching all of it again: a job that printed without a
    newline grew the runner without bound (the node's memory, which the OOM killer then takes
    back from some process: another user's job) and kept a core busy with quadratic work. A line
    is cut at 16 KB anyway: past that, the rest of it is dropped as it comes."""
    c = cluster
    py, libs = job_python()
    (c.root / "no_newline.py").write_text(NO_NEWLINE)
    bob = c.client("bob")
    job = bob.submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                      "command": [py, str(c.root / "no_newline.py")]})["id"]
    runner = wait_until(lambda: (bob.get(job)["attempts"] or [{}])[-1].get("pid"), 30, 0.05, "bob's job to start")
    peak, t0 = 0.0, time.time()
    while time.time() - t0 < 40 and bob.get(job)["state"] == "running":
        peak = max(peak, _rss_mb(runner))
        time.sleep(0.1)
    assert peak < 150 and time.time() - t0 < 40, f"the runner grew to {peak:.0f} MB in {time.time() - t0:.0f} s"
    rec = c.wait_done([job], 5)[job]
    out = logs(bob.events(job))
    assert rec["state"] == "succeeded" and out.endswith("end"), (rec["state"], out[-200:])
    assert "[line cut]" in out and len(out) < 100_000


ESCAPES = r'''
import os, subprocess, sys, time
for _ in range(30):  # orphans that end at once: their zombies are the runner's to reap
    subprocess.Popen([sys.executable, "-c", "import os; os.fork() or os._exit(0)"]).wait()
# one that lives on in a session of its own, out of the job's process group, away from its pipes
p = subprocess.Popen([sys.executable, "-c", "import os, time; os.fork() and os._exit(0); time.sleep(120)"],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
p.wait()
print("orphans made", flush=True)
time.sleep(8)  # the runner reaps ended orphans every 2 s: their zombies go while the job runs
print("main ends", flush=True)
'''


def _children_of(ppid: int) -> list[tuple[int, str]]:
    out = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, parent = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(parent) == ppid:
            out.append((int(name), state))
    return out


def test_no_process_of_a_job_outlives_it(cluster: Cluster) -> None:
    """The runner ended a job by killing its process group: a process the job left in a session
    of its own ran on after the job's end, as its user, on GPUs the queue then gave to the next
    job, and no cancel reached it. The runner is now the subreaper of the job's processes: an
    orphan of the job becomes the runner's child (it reaps those that end), and whatever of them
    still runs when the job ends is killed."""
    import psutil

    c = cluster
    py, libs = job_python()
    (c.root / "escapes.py").write_text(ESCAPES)
    bob = c.client("bob")
    job = bob.submit({"kind": "command", "gpus": 1, "retries": 0, "env": _env(libs),
                      "command": [py, str(c.root / "escapes.py")]})["id"]
    runner = wait_until(lambda: (bob.get(job)["attempts"] or [{}])[-1].get("pid"), 30, 0.05, "bob's job to start")
    uid = wait_until(lambda: os.stat(c.root / "node-n1" / "work" / job).st_uid, 10, 0.05, "bob's job folder")
    wait_until(lambda: "orphans made" in logs(bob.events(job)), 60, 0.1, "the job's 30 orphans to be made and end")

    def zombies() -> list[int]:
        return [pid for pid, state in _children_of(runner) if state == "Z"]

    # they pile up no longer than a reaping period (2 s) and a margin: a single look at a fixed
    # time raced the runner's period on a loaded machine
    wait_until(lambda: len(zombies()) < 5, 6, 0.1, "the job's ended orphans to be reaped")
    rec = c.wait_done([job], 60)[job]
    assert rec["state"] == "succeeded", logs(bob.events(job))
    # the escapes' processes (the uid alone is not enough: a cluster of another test running
    # beside this one allocates its dynamic uids from the same range)
    left = [p.pid for p in psutil.process_iter(["uids", "cmdline"]) if p.info["uids"] and p.info["uids"].real == uid
            and "time.sleep(120)" in " ".join(p.info["cmdline"] or [])]
    for pid in left:
        os.kill(pid, 9)
    assert left == [], "a process of bob's job outlived it"
