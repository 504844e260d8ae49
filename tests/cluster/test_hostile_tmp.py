"""The node's temporary folders, tried by a hostile job: bob's job runs on the same node as
alice's, both under their own dynamic uids, started by a real Celery worker running as root.
``/tmp`` is one folder for every user of the node, so bob can plant there, under a name he can
predict, what alice's job takes as its own (PyTorch's compile cache is
``<tempdir>/torchinductor_<user>``, and it loads the kernels it finds there), and list the names
of what her jobs leave there. Each job's temporary folder (``TMPDIR``) is its owner's alone.
``/dev/shm`` is every user's too, and memory: what alice's jobs leave there goes once none of
her jobs runs on the node. With ``--private-tmp on`` (the default as root) each job's ``/tmp``,
``/var/tmp`` and ``/dev/shm`` are its own (a mount namespace per attempt): bob's job sees none of
the names alice's job uses there and makes them his own without touching hers.
The cluster lives outside ``/tmp``, which a job's own namespace hides (``identity_cluster``)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from helpers.servers import wait_until
from training.jobs import logs

from gpuqueue.attempt import launch, privtmp

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

# alice's job does what a library with a cache in the temporary folder does (torch.compile):
# it takes <tempdir>/torchinductor_<user>, making it if need be, and loads what it finds there
ALICE = r'''
import getpass, os, runpy, sys, tempfile
cache = os.path.join(tempfile.gettempdir(), "torchinductor_" + getpass.getuser())
os.makedirs(cache, exist_ok=True)
kernel = os.path.join(cache, "kernel.py")
if os.path.exists(kernel):
    runpy.run_path(kernel)
with open(os.path.join(tempfile.gettempdir(), "scratch-" + os.environ["GPUQUEUE_JOB_ID"]), "w") as f:
    f.write("alice's scratch")
print("tempdir", tempfile.gettempdir(), flush=True)
'''

# bob's job: plant a kernel where alice's cache would be, or list what her jobs left
BOB = r'''
import glob, json, os, sys, tempfile
if sys.argv[1] == "plant":
    for tmp in {"/tmp", tempfile.gettempdir()}:
        cache = os.path.join(tmp, "torchinductor_alice")
        os.makedirs(cache, exist_ok=True)
        os.chmod(cache, 0o777)
        with open(os.path.join(cache, "kernel.py"), "w") as f:
            f.write("print('code planted by bob ran as uid', __import__('os').getuid(), flush=True)\n")
        os.chmod(os.path.join(cache, "kernel.py"), 0o666)
else:
    seen = []
    for top in ["/tmp", tempfile.gettempdir(), *glob.glob(sys.argv[2] + "/*/*")]:
        for dirpath, dirs, files in os.walk(top):
            seen += [os.path.join(dirpath, n) for n in dirs + files if sys.argv[1] in n]
    print("seen", json.dumps(seen), flush=True)
'''


# alice's jobs leave POSIX shared memory behind (a segment, and a folder of them), as a crashed
# DataLoader or NCCL does; the first waits for its go file
SHM = r'''
import os, sys, time
mark = "/dev/shm/gq-shm-" + os.environ["GPUQUEUE_JOB_ID"]
with open(mark, "wb") as f:
    f.write(b"x" * 4096)
os.makedirs(mark + ".d")
open(mark + ".d/seg", "w").write("y")
print("made", flush=True)
while len(sys.argv) > 1 and not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
'''


# bob's job leaves a folder of MANY names in the node's /dev/shm (its own memory: the node's tmpfs
# takes millions), then ends
MANY = 400_000  # under what one removal call looks at (removal.MAX_WORK: each name is read, then removed)
LEAVE_MANY = r'''
import os, sys
folder = "/dev/shm/gq-many-" + os.environ["GPUQUEUE_JOB_ID"]
os.mkdir(folder)
fd = os.open(folder, os.O_RDONLY)
for i in range(int(sys.argv[1])):
    os.close(os.open(f"{i}", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
print("made", flush=True)
'''


# alice's job uses the node's temporary folders under fixed names, as programs that ignore TMPDIR
# do, and a named POSIX shared memory segment; a child of it reads what it wrote in /dev/shm (as a
# DataLoader worker or another rank of the job does). Bob's job, run at the same time, looks for
# the same names, then makes them his. Each says what it saw; alice's job waits for its go file
# and then checks that what it made is still its own.
NAMES = r'''
import json, os, subprocess, sys, time
from multiprocessing import shared_memory, resource_tracker
who, tag, go = sys.argv[1], sys.argv[2], sys.argv[3]
files = [f"/tmp/x-{tag}", f"/var/tmp/y-{tag}", f"/dev/shm/z-{tag}"]
seg = f"seg-{tag}"
seen = [f for f in files if os.path.exists(f)]
try:
    shm = shared_memory.SharedMemory(name=seg)
    seen.append(seg)
    shm.close()
except FileNotFoundError:
    pass
print("seen", json.dumps(seen), flush=True)
for f in files:
    with open(f, "w") as out:
        out.write(who)
shm = shared_memory.SharedMemory(name=seg, create=True, size=16)
resource_tracker.unregister(shm._name, "shared_memory")  # left behind, as a crashed job leaves it
shm.buf[:len(who)] = who.encode()
child = subprocess.run([sys.executable, "-c", f"print(open('/dev/shm/z-{tag}').read())"], capture_output=True, text=True)
print("child read", child.stdout.strip(), flush=True)
for folder in (os.environ["HOME"], os.environ["GPUQUEUE_JOB_DIR"]):  # its own folders are where they were
    with open(os.path.join(folder, f"mark-{tag}"), "w") as out:
        out.write(who)
print("made", flush=True)
while go != "-" and not os.path.exists(go):
    time.sleep(0.1)
mine = [open(f).read() for f in files] + [bytes(shm.buf[:len(who)]).decode()]
print("still mine", json.dumps(mine == [who] * 4), flush=True)
'''


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    def scripts(c: Cluster) -> None:
        for name, text in (("alice.py", ALICE), ("bob.py", BOB), ("shm.py", SHM), ("names.py", NAMES),
                           ("many.py", LEAVE_MANY)):
            (c.root / name).write_text(text)

    try:
        with identity_cluster("gq-hostile-tmp-", {"n1": 2}, redis_kw={"appendonly": True},
                              setup=scripts, worker_args=tuple(getattr(request, "param", ()))) as c:
            yield c
    finally:
        shutil.rmtree("/tmp/torchinductor_alice", ignore_errors=True)


def test_a_job_cannot_plant_in_nor_list_another_users_temporary_folder(cluster: Cluster) -> None:
    c = cluster
    py, libs = job_python()
    env = {"PYTHONPATH": libs}
    bob = c.client("bob")
    plant = bob.submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "bob.py"), "plant"], "env": env})["id"]
    assert c.wait_done([plant], 60)[plant]["state"] == "succeeded", logs(bob.events(plant))

    alice = c.client("alice").submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "alice.py")],
                                      "env": env})["id"]
    rec = c.wait_done([alice], 60)[alice]
    alice_log = logs(c.client("alice").events(alice))
    assert rec["state"] == "succeeded", alice_log
    # alice's job ran nothing of bob's: its temporary folder is not the one he planted in
    assert "planted by bob" not in alice_log, alice_log
    assert "tempdir /tmp\n" not in alice_log + "\n", alice_log

    # and once it ended, bob sees no name of what it left there
    look = bob.submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "bob.py"), alice, str(c.root)],
                       "env": env})["id"]
    assert c.wait_done([look], 60)[look]["state"] == "succeeded", logs(bob.events(look))
    seen = next(json.loads(line[5:]) for line in logs(bob.events(look)).splitlines() if line.startswith("seen "))
    assert seen == [], seen


# where jobs share the node's /dev/shm (no namespace of their own), what they leave there is swept
@pytest.mark.parametrize("cluster", [("--private-tmp", "off")], indirect=True)
def test_what_a_users_jobs_leave_in_shared_memory_goes_once_none_of_them_runs_on_the_node(cluster: Cluster) -> None:
    c = cluster
    py, libs = job_python()
    alice = c.client("alice")
    go = c.root / "go"
    other = Path(f"/dev/shm/gq-shm-root-{uuid.uuid4().hex[:8]}")  # someone else's: never touched
    other.write_text("root's")
    try:
        first = alice.submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "shm.py"), str(go)]})["id"]
        wait_until(lambda: any(e["data"].get("line") == "made" for e in alice.events(first)), 60, 0.1, "the first job")
        second = alice.submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "shm.py")]})["id"]
        assert c.wait_done([second], 60)[second]["state"] == "succeeded", logs(alice.events(second))
        made = [Path(f"/dev/shm/gq-shm-{j}{end}") for j in (first, second) for end in ("", ".d")]
        assert all(p.exists() for p in made), made  # her first job still runs: it may use them
        go.touch()
        assert c.wait_done([first], 60)[first]["state"] == "succeeded", logs(alice.events(first))
        wait_until(lambda: not any(p.exists() for p in made), 30, 0.1, "what alice's jobs left in /dev/shm to go")
        assert other.read_text() == "root's"
    finally:
        other.unlink()
        for p in Path("/dev/shm").glob("gq-shm-j-*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("cluster", [("--private-tmp", "off")], indirect=True)
def test_what_a_job_leaves_in_shared_memory_holds_no_other_users_launch_while_it_goes(cluster: Cluster) -> None:
    """Bob's job leaves 400,000 names in the node's /dev/shm. Root removes them once none of his
    jobs runs on the node (some seconds), under the worker's lock, on its tail thread: every
    launch on the node (the claim takes the lock), its heartbeats (which the daemon takes for
    the node's life: a minute without them and every job on it is lost) and every job's live
    log waited meanwhile, as long as bob's jobs had left names (millions: minutes). Alice's
    job, submitted once the removal is under way, runs and ends before it is done; and it is done."""
    c = cluster
    py, libs = job_python()
    bob = c.client("bob").submit({"kind": "command", "retries": 0, "command": [py, str(c.root / "many.py"), str(MANY)]})["id"]
    folder = Path(f"/dev/shm/gq-many-{bob}")
    try:
        assert c.wait_done([bob], 120)[bob]["state"] == "succeeded", logs(c.client("bob").events(bob))
        full = os.stat(folder).st_size  # tmpfs: a folder's size grows with its names
        wait_until(lambda: not folder.exists() or os.stat(folder).st_size < full, 60, 0.05, "the removal to begin")
        alice = c.client("alice").submit({"kind": "command", "retries": 0, "command": [py, "-c", "print('hi')"]})["id"]
        assert c.wait_done([alice], 120)[alice]["state"] == "succeeded", logs(c.client("alice").events(alice))
        assert folder.exists(), "alice's job waited for the removal of bob's names to end"
        wait_until(lambda: not folder.exists(), 120, 0.2, "bob's names to go")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _line(text: str, start: str) -> str:
    return next(line[len(start):] for line in text.splitlines() if line.startswith(start))


def test_a_job_sees_none_of_the_names_another_users_job_uses_in_tmp_and_shared_memory(cluster: Cluster) -> None:
    why = privtmp.probe(launch.runner_env())
    if why is not None:
        pytest.skip(f"no mount namespace for jobs here: {why}")
    c = cluster
    py, libs = job_python()
    env = {"PYTHONPATH": libs}
    tag, go = uuid.uuid4().hex[:8], c.root / "go-names"
    real = [Path(f"/tmp/x-{tag}"), Path(f"/var/tmp/y-{tag}"), Path(f"/dev/shm/z-{tag}"), Path(f"/dev/shm/seg-{tag}")]
    alice, bob = c.client("alice"), c.client("bob")
    try:
        a = alice.submit({"kind": "command", "retries": 0, "env": env,
                          "command": [py, str(c.root / "names.py"), "alice", tag, str(go)]})["id"]
        wait_until(lambda: any(e["data"].get("line") == "made" for e in alice.events(a)), 60, 0.1, "alice's job")
        a_log = logs(alice.events(a))
        assert _line(a_log, "seen ") == "[]" and _line(a_log, "child read ") == "alice", a_log  # her own child sees it
        # while hers runs, bob's job on the same node sees none of her names, and takes them
        b = bob.submit({"kind": "command", "retries": 0, "env": env,
                        "command": [py, str(c.root / "names.py"), "bob", tag, "-"]})["id"]
        rec = c.wait_done([b], 60)[b]
        b_log = logs(bob.events(b))
        assert rec["state"] == "succeeded", b_log
        assert _line(b_log, "seen ") == "[]", b_log
        assert _line(b_log, "child read ") == "bob" and _line(b_log, "still mine ") == "true", b_log
        go.touch()
        assert c.wait_done([a], 60)[a]["state"] == "succeeded", logs(alice.events(a))
        a_log = logs(alice.events(a))
        assert _line(a_log, "still mine ") == "true", a_log  # bob's names touched nothing of hers
        # and nothing either left is in the node's own folders or memory
        assert [p for p in real if os.path.lexists(p)] == []
        assert "each job gets its own /tmp, /var/tmp and /dev/shm" in c.log("worker-n1")
        assert len(list((c.root / "node-n1").glob(f"home/*/mark-{tag}"))) == 2  # HOME: as without the namespace
        assert len(list((c.root / "node-n1").glob(f"**/mark-{tag}"))) == 4  # and the job folders
    finally:
        for p in real:
            if os.path.lexists(p):
                p.unlink()


def test_a_working_folder_in_the_nodes_tmp_fails_with_the_reason_and_the_fix(cluster: Cluster) -> None:
    """A job's /tmp is its own: a folder that is in the node's /tmp is not there for the job.
    The user is told so, not that the folder does not exist (it does, on the node)."""
    why = privtmp.probe(launch.runner_env())
    if why is not None:
        pytest.skip(f"no mount namespace for jobs here: {why}")
    c = cluster
    here = Path(f"/tmp/gq-cwd-{uuid.uuid4().hex[:8]}")
    here.mkdir(mode=0o777)
    here.chmod(0o777)  # any uid may enter it, on the node
    try:
        alice = c.client("alice")
        job = alice.submit({"kind": "command", "retries": 2, "command": ["true"], "cwd": str(here)})["id"]
        rec = c.wait_done([job], 60)[job]
    finally:
        here.rmdir()
    assert rec["state"] == "failed", rec
    assert rec["error"] == (
        f"the job could not start on node n1: its working folder {here} is under /tmp, which is the job's own "
        "on that node (the worker gives each job its own /tmp, /var/tmp and /dev/shm): put it in a folder outside "
        "them, e.g. in your home, or ask your admin (gpuqueue worker --private-tmp)"), rec["error"]
    assert [a["outcome"] for a in rec["attempts"]] == ["cannot_start"], rec["attempts"]  # no retry spent


@pytest.mark.parametrize("cluster", [("--job-shm-gb", "0.25")], indirect=True)
def test_a_jobs_own_shared_memory_has_the_size_the_admin_gave(cluster: Cluster) -> None:
    """``--job-shm-gb`` bounds each job's own /dev/shm (the default, half the node's memory,
    is what the other tests here run with)."""
    why = privtmp.probe(launch.runner_env())
    if why is not None:
        pytest.skip(f"no mount namespace for jobs here: {why}")
    c = cluster
    py, _ = job_python()
    alice = c.client("alice")
    size = "import os; s = os.statvfs('/dev/shm'); print('shm bytes', s.f_blocks * s.f_frsize)"
    job = alice.submit({"kind": "command", "retries": 0, "command": [py, "-c", size]})["id"]
    rec = c.wait_done([job], 60)[job]
    out = logs(alice.events(job))
    assert rec["state"] == "succeeded", out
    assert _line(out, "shm bytes ") == str(2**28), out
