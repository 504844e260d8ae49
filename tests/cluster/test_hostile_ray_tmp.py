"""A hostile job's own Ray folder on the other node of its gang (``gpuqueue.cluster.rayjob``):
the folder ``<state>/tmp/<uid>/gqr-<random>`` is the job's uid's, and so is every process the
worker starts there (``ray start --address``, run with the job's ``python``). Root still uses
the folder's path after making it:

* ``RayNodes._start`` gave ``subprocess.Popen`` ``cwd=<folder path>``: the child chdir'd as root,
  following a link the owner's process swapped in a moment after root opened ``ray.log``
  (inotify), so the job's process starts in a folder its uid may not reach (whose ancestor it
  cannot traverse): it reads what is in there.
* ``RayNodes._join``, once the join gave up, read ``<folder>/ray.log`` by path as root
  (``_tail``: ``read_text``), following the link the job put there: a root-only file lands in
  the worker's log (a link to ``/dev/zero`` makes root read without end; a FIFO hangs the thread).

Bob's job stands in its own ``python`` (which the worker runs as his Ray on both nodes): on the
first node a stand-in head (a port that answers), on the other the attack. Also: the ranks on
the other node ran with the worker's umask, not the 077 the runner gives every job
(docs/deploy.md, Identities). Each test failed on the code before the fix (7399b37): root's
chdir followed the link and Bob read the file, the worker log held the root-only file, the
second node's rank ran with umask 022. Now the child changes into the folder only as the owner
(``rayjob._child``, ``privtmp.exec_as``), ``rayfiles.log_tail`` reads only a plain file of the
owner's, and the child starts with umask 077."""

from __future__ import annotations

import json
import os
import random
import re
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers.servers import wait_until

from gpuqueue.attempt import launch, privtmp

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

WAIT_S = 20  # the workers' GPUQUEUE_RAY_JOIN_WAIT_S

# what Bob's "python" does where the worker runs it as anything but his Ray node on the other node
# (the launcher on the first node: it stands in for the head, a port that answers, until MARKS/done;
# every other use: the real interpreter). Needs REAL, WAIT_S, argv and done defined before it
STAND_IN = r'''if "gpuqueue.job.distributed" in argv:  # the launcher on the first node: a head that answers
    ip, port = os.environ["GPUQUEUE_RAY_HEAD"].rsplit(":", 1)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, int(port)))
    s.listen(64)
    s.settimeout(0.3)
    end = time.time() + 3 * WAIT_S
    while time.time() < end and not os.path.exists(done):
        try:
            s.accept()[0].close()
        except OSError:
            pass
    time.sleep(1)
    sys.exit(0)
if "ray.scripts.scripts" not in argv:
    os.execv(REAL, [REAL] + argv)
'''

# Bob's "python". Substituted: @REAL@, @MODE@, @TARGET@, @MARKS@, @WAIT_S@
EVIL = r'''#!@REAL@
import ctypes, json, os, socket, struct, sys, time
REAL, MODE, TARGET, MARKS, WAIT_S = "@REAL@", "@MODE@", "@TARGET@", "@MARKS@", float("@WAIT_S@")
argv = sys.argv[1:]
done = os.path.join(MARKS, "done")

def note(**kw):
    with open(os.path.join(MARKS, "bob.txt"), "a") as f:
        f.write("BOB " + json.dumps(kw) + "\n")

''' + STAND_IN + r'''
# the worker's `ray start --address`, as Bob, in his own /tmp, started in (root chose) the folder
inside = os.environ["GPUQUEUE_RAY_DIR"]  # /tmp/gqr-<random>: Bob's own /tmp is his uid's folder
held = inside + "-held"
if os.path.exists(done):
    sys.exit(1)

if MODE == "tail":  # once the join gives up, root reads ray.log: make it a link
    left = os.stat("token").st_mtime + WAIT_S - time.time()
    note(step="join", cwd=os.getcwd(), left=left)
    if left > 1.5:
        sys.exit(1)  # the worker starts it again a second later
    time.sleep(max(left, 0) + 0.3)
    os.unlink("ray.log")
    os.symlink(TARGET, "ray.log")
    open(done, "w").close()
    sys.exit(1)

# MODE == "cwd": root opens ray.log, then Popen chdirs to the folder's path: swap it for a link
try:
    loot = open("secret.txt").read()
except OSError:
    loot = None
note(step="join", cwd=os.getcwd(), loot=loot)
if os.path.islink(inside):
    os.unlink(inside)
if os.path.isdir(held):
    os.rename(held, inside)
if loot is not None:
    open(done, "w").close()
    sys.exit(1)
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
libc.inotify_add_watch(fd, inside.encode(), 0x20)  # IN_OPEN
if os.fork() == 0:
    os.setsid()
    if os.fork():
        os._exit(0)
    while True:
        buf, i, hit = os.read(fd, 4096), 0, False
        while i < len(buf):
            _, _, _, n = struct.unpack_from("iIII", buf, i)
            hit = hit or buf[i + 16:i + 16 + n].rstrip(b"\0") == b"ray.log"
            i += 16 + n
        if hit:
            os.rename(inside, held)
            os.symlink(TARGET, inside)
            os._exit(0)
os.wait()
sys.exit(1)
'''


def bob_cluster(monkeypatch: pytest.MonkeyPatch, prefix: str, script: str,
                more: Callable[[Cluster], dict[str, str]], wait_s: float = WAIT_S) -> Iterator[Cluster]:
    """A started cluster of two nodes (n1, n2) whose jobs run under their users' own uids with
    their own ``/tmp`` (skipped where this machine makes no mount namespace), with no shared Ray,
    joins that wait ``wait_s``, and Bob's "python" at ``<root>/evil``: ``script`` with ``@REAL@``,
    ``@MARKS@`` (``<root>/marks``, everyone's), ``@WAIT_S@`` and what ``more(c)`` returns (it
    runs first: files the script needs) put in."""
    why = privtmp.probe(launch.runner_env())
    if why is not None:
        pytest.skip(f"no mount namespace for jobs here: {why}")
    for k in ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)  # no shared Ray: each multi-node attempt gets its own
    monkeypatch.setenv("GPUQUEUE_RAY_JOIN_WAIT_S", str(wait_s))
    first = 68000 + 50 * random.randrange(40)
    py, _ = job_python()

    def setup(c: Cluster) -> None:
        (c.root / "marks").mkdir(mode=0o777)
        (c.root / "marks").chmod(0o777)
        put = {"@REAL@": py, "@MARKS@": str(c.root / "marks"), "@WAIT_S@": str(wait_s), **more(c)}
        text = script
        for k, v in put.items():
            text = text.replace(k, v)
        (c.root / "evil").write_text(text)
        (c.root / "evil").chmod(0o755)

    with identity_cluster(prefix, {"n1": 1, "n2": 1}, setup=setup,
                          worker_args=("--uid-range", f"{first}-{first + 49}")) as c:
        yield c


def _cluster(monkeypatch: pytest.MonkeyPatch, mode: str) -> Iterator[Cluster]:
    def more(c: Cluster) -> dict[str, str]:
        locked = c.root / "locked"  # root's: no job uid may traverse it
        (locked / "pub").mkdir(parents=True)
        locked.chmod(0o700)
        (locked / "pub").chmod(0o755)
        (locked / "pub" / "secret.txt").write_text("root-only-" + uuid.uuid4().hex)
        (locked / "pub" / "secret.txt").chmod(0o644)
        target = locked / "pub" if mode == "cwd" else locked / "pub" / "secret.txt"
        return {"@MODE@": mode, "@TARGET@": str(target)}

    yield from bob_cluster(monkeypatch, "gq-hostile-raytmp-", EVIL, more)


def _run_bob(c: Cluster) -> tuple[str, list[dict]]:
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    bob = c.client("bob")
    job = bob.submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": str(c.root / "evil"),
                      "env": {"PYTHONPATH": os.pathsep.join([backend, libs])}, "command": [py, "-c", "pass"]})["id"]
    c.wait_done([job], 4 * WAIT_S)
    marks = c.root / "marks" / "bob.txt"
    said = [json.loads(m) for m in re.findall(r"BOB (\{.*\})", marks.read_text() if marks.exists() else "")]
    if not [s for s in said if s["step"] == "join"]:  # not the finding: the attack never ran
        raise RuntimeError(f"Bob's join never ran: {said}\n{c.log('worker-n1')[-3000:]}\n{c.log('worker-n2')[-3000:]}")
    return job, said


@pytest.fixture
def cwd_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from _cluster(monkeypatch, "cwd")


@pytest.fixture
def tail_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    yield from _cluster(monkeypatch, "tail")


def test_root_never_starts_the_jobs_ray_in_a_folder_the_job_links_to(cwd_cluster: Cluster) -> None:
    c = cwd_cluster
    _, said = _run_bob(c)
    secret = (c.root / "locked" / "pub" / "secret.txt").read_text()
    stolen = [s for s in said if s.get("loot")]
    # on rayjob.py as it is: Bob's process starts in /.../locked/pub (root's chdir followed his
    # link) and reads the file his uid cannot reach by any path
    assert stolen == [], f"Bob read {secret!r}: {stolen}"
    assert all(s["cwd"] != str(c.root / "locked" / "pub") for s in said), said


def test_root_never_reads_a_file_the_job_links_as_its_ray_log(tail_cluster: Cluster) -> None:
    c = tail_cluster
    _run_bob(c)
    secret = (c.root / "locked" / "pub" / "secret.txt").read_text()
    logs = {n: "" for n in ("worker-n1", "worker-n2")}

    def gave_up() -> bool:
        for n in logs:
            logs[n] = c.log(n)
        return any("cannot join the job's Ray" in t for t in logs.values())

    if not (c.root / "marks" / "done").exists():
        raise RuntimeError("Bob's join never got to link its ray.log")
    try:
        wait_until(gave_up, 30, 0.5, "the join gave up")
    except Exception as e:  # noqa: BLE001 - not the finding
        raise RuntimeError(f"the join did not give up: {e}\n{logs}") from e
    # on rayjob.py as it is: "this node cannot join the job's Ray: ray start ... exited ...: root-only-..."
    assert not [n for n, t in logs.items() if secret in t], [t[-1500:] for t in logs.values()]


# one rank of Alice's job: the umask it runs with, and the mode of a file it makes
RANK_UMASK = r'''
import json, os, sys
mask = os.umask(0o022)
os.umask(mask)
with open(sys.argv[1], "a") as f:
    f.write("RANK " + json.dumps({"rank": int(os.environ["RANK"]), "node": os.environ["GPUQUEUE_NODE"],
                                  "umask": oct(mask)}) + "\n")
'''


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    pytest.importorskip("ray")
    yield from _cluster(monkeypatch, "none")


def test_every_rank_of_a_job_on_two_nodes_runs_with_umask_077(ray_cluster: Cluster) -> None:
    c = ray_cluster
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    marks = c.root / "marks" / "ranks.txt"
    job = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
                                    "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
                                    "command": [py, "-c", RANK_UMASK, str(marks)]})["id"]
    rec = c.wait_done([job], 180)[job]
    said = sorted((json.loads(m) for m in re.findall(r"RANK (\{.*\})", marks.read_text() if marks.exists() else "")),
                  key=lambda r: r["rank"])
    if rec["state"] != "succeeded" or len(said) != 2:  # not the finding
        raise RuntimeError(f"{rec['state']}: {rec.get('error')} {said}\n{c.log('worker-n2')[-2000:]}")
    # rank 0 (the runner's launcher, umask 077) and rank 1 (the other node's Ray, started by the
    # worker): on rayjob.py/privtmp.py as they are, rank 1 says the worker's umask (0o22 here; the
    # shipped unit's UMask=0077 hides it, a worker started otherwise - by hand, a container - not)
    assert [r["umask"] for r in said] == ["0o77", "0o77"], said
