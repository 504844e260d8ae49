"""Bob against the worker (root) as it cleans up his part of a multi-node job on another node
(``gpuqueue.cluster.rayjob``, ``gpuqueue.cluster.rayfiles``): root removes folders in places his
uid controls (his own ``/tmp`` on the node, ``<state>/tmp/<uid>``, which all his jobs there
share): the join's Ray folder ``gqr-<random>`` (``end_ray``) and the scratch folders
``gpuqueue-<job>-rank<N>-*`` his killed ranks left (``remove_scratch``). Both used
``shutil.rmtree``, which Python 3.11 does through descriptors (it follows no link *inside* a
folder) but opens the folder it is given, and each subfolder it found, with a plain
``O_RDONLY``: a link there - put in place before (``end_ray``: no check at all) or swapped in
after root looked (``remove_scratch``; a process of another of Bob's jobs on the node does it as
it sees root start to delete) - is followed. To a FIFO of Bob's: root's open waits for a writer
for good; to a device: root opens it.

* ``remove_scratch`` (rank scratch folders, new in 31a4b7e): a process of Bob's swaps the
  scratch folders for links to his FIFO as root begins deleting them: on old code root's
  thread waits forever (``remove_scratch still waits ... after 20 s``).
* ``end_ray`` (the join's Ray folder): Bob's ``python`` (which the worker runs as his ``ray
  start`` on the other node) makes the folder a link to his FIFO and exits; the join gives up
  and root's ``end_ray`` waits forever, so the join never ends: the worker's stop waits 10 s
  for it, leaves its record, and the next worker there hangs in its start-up sweep (the same
  ``end_ray``) before its first heartbeat: the node is gone from the queue until an admin
  finds the FIFO (on old code: ``the worker on n2 did not come back``).

Now ``rayfiles.remove_tree`` opens only folders (``O_DIRECTORY | O_NOFOLLOW``) and unlinks
whatever else it finds, never opening it."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from helpers.servers import wait_until

from gpuqueue.cluster.rayfiles import remove_scratch

from .conftest import Cluster, outside_tmp
from .test_hostile_ray_tmp import STAND_IN, bob_cluster
from .test_isolation import job_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

# Bob's process in his own /tmp (``TMP``): N scratch folders of job J (a few files each), his
# FIFO, and, as soon as root deletes the first of them, each of the others swapped for a link to it
SWAPPER = r'''
import ctypes, os, struct, sys
tmp, job, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.chdir(tmp)
os.mkfifo("bob-fifo")
names = [f"gpuqueue-{job}-rank1-{i}" for i in range(n)]
for name in names:
    os.mkdir(name)
    for k in range(5):
        open(os.path.join(name, f"f{k}"), "w").close()
os.mkdir("aside")
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
libc.inotify_add_watch(fd, tmp.encode(), 0x200)  # IN_DELETE: a name in it removed
print("ready", flush=True)
os.read(fd, 4096)  # root removed its first folder: it listed them all, and goes on one by one
swapped = 0
for i, name in enumerate(names):
    try:
        os.rename(name, f"aside/{i}")
        os.symlink("bob-fifo", name)
        swapped += 1
    except OSError:
        pass
print("swapped", swapped, flush=True)
'''


@pytest.fixture
def outside() -> Iterator[Path]:
    d = outside_tmp("gq-hostile-scratch-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_root_never_opens_what_bob_swaps_in_for_his_scratch_folders(outside: Path) -> None:
    uid = 69000 + random.randrange(900)
    tmp = outside / str(uid)  # Bob's own /tmp on the node (privtmp: <state>/tmp/<uid>, 700, his)
    tmp.mkdir(mode=0o700)
    os.chown(tmp, uid, uid)
    py, _ = job_python()  # a python every uid may run
    bob = subprocess.Popen([py, "-I", "-c", SWAPPER, str(tmp), "j-0123456789ab", "400"],
                           user=uid, group=uid, extra_groups=[], stdout=subprocess.PIPE, text=True)
    done: list[int] = []
    root = threading.Thread(target=lambda: done.append(remove_scratch(tmp, "j-0123456789ab", uid)), daemon=True)
    try:
        assert bob.stdout is not None
        assert bob.stdout.readline().strip() == "ready"
        root.start()
        said = bob.stdout.readline().strip()
        bob.wait(30)
        root.join(20)
        swapped = int(said.split()[1]) if said.startswith("swapped") else 0
        if not swapped:  # not the finding: root was faster than Bob this time
            pytest.skip(f"Bob swapped no folder in time ({said!r})")
        # on rayfiles.py as it was: shutil.rmtree opened a folder's name that Bob had swapped for a
        # link to his FIFO, after remove_scratch checked it: root's open waits for a writer for good
        assert not root.is_alive(), (f"root's remove_scratch still waits (in open() of Bob's FIFO through one of "
                                     f"the {swapped} links he swapped in) after 20 s")
        # every folder of the job's removed (the links unlinked, not followed); Bob's FIFO and what he
        # moved aside are his own
        left = [n for n in os.listdir(tmp) if n.startswith("gpuqueue-") and stat.S_ISDIR(os.lstat(tmp / n).st_mode)]
        assert left == [], left[:5]
        assert os.path.exists(tmp / "bob-fifo")
    finally:
        bob.kill()
        bob.wait()
        for _ in range(50):  # release root's thread where it waits
            if not root.is_alive():
                break
            try:
                os.close(os.open(tmp / "bob-fifo", os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            time.sleep(0.1)


WAIT_S = 10  # the workers' GPUQUEUE_RAY_JOIN_WAIT_S

# Bob's "python". Substituted: @REAL@, @MARKS@, @WAIT_S@, @MODE@
EVIL = r'''#!@REAL@
import json, os, socket, sys, time
REAL, MARKS, WAIT_S, MODE = "@REAL@", "@MARKS@", float("@WAIT_S@"), "@MODE@"
argv = sys.argv[1:]
done = os.path.join(MARKS, "done")

''' + STAND_IN + r'''
# the worker's `ray start --address` on the other node, as Bob, in his own /tmp
inside = os.environ["GPUQUEUE_RAY_DIR"]
if os.path.exists(done):
    sys.exit(1)
if MODE == "deep":  # a tree of folders deeper than Python's recursion limit, in the folder root made him
    fd = os.open(inside, os.O_RDONLY)
    for i in range(3000):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    open(done, "w").close()
else:  # "fifo": the folder becomes a link to his FIFO (relative: root finds it beside the link)
    os.rename(inside, inside + "-held")
    os.mkfifo("/tmp/bob-fifo")
    os.symlink("bob-fifo", inside)
    with open(os.path.join(MARKS, "bob.txt"), "a") as f:
        f.write("BOB " + json.dumps({"step": "planted", "inside": inside}) + "\n")
    open(done, "w").close()
sys.exit(1)
'''


@pytest.fixture(params=["fifo", "deep"])
def cluster(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield from bob_cluster(monkeypatch, "gq-hostile-gang-", EVIL, lambda c: {"@MODE@": request.param}, WAIT_S)


def _release(c: Cluster) -> None:
    """Open every FIFO Bob left in his folders on n2 for writing: a thread of root's that waits in
    its open() goes on (old code; the cluster is killed next anyway). Remove his deep trees (the
    cluster's own clean-up is a ``shutil.rmtree``)."""
    for fifo in c.root.glob("node-n2/tmp/*/bob-fifo"):
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    subprocess.run(["rm", "-rf", "--one-file-system", *map(str, c.root.glob("node-n2/tmp/*/gqr-*"))], check=False)


def test_what_bob_leaves_in_the_joins_ray_folder_never_stops_the_nodes_worker(cluster: Cluster) -> None:
    c = cluster
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    try:
        job = c.client("bob").submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0,
                                      "python": str(c.root / "evil"),
                                      "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
                                      "command": [py, "-c", "pass"]})["id"]
        c.wait_done([job], 6 * WAIT_S)
        if not (c.root / "marks" / "done").exists():  # not the finding: the attack never ran
            raise RuntimeError(f"Bob's join never ran\n{c.log('worker-n1')[-3000:]}\n{c.log('worker-n2')[-3000:]}")
        wait_until(lambda: "this node cannot join the job's Ray" in c.log("worker-n2"), 3 * WAIT_S, 0.2,
                   "the join gave up")
        # its part on n2 ends (its folder's record goes once end_ray is through)
        records = c.root / "node-n2" / "ray-folders"
        ended = True
        try:
            wait_until(lambda: not list(records.glob("gqr-*")), 15, 0.2, "the join's end")
        except Exception:  # noqa: BLE001 - what the admin sees next says it
            ended = False
        # the worker of n2 is restarted (an upgrade, a reboot of the service): it must come back
        c.kill("worker-n2", signal.SIGTERM)
        r = c.redis_client()
        key = next(k for k in r.scan_iter("*hb:n2"))
        before = json.loads(r.get(key))["instance"]
        c.start_worker("n2")

        def back() -> bool:
            hb = json.loads(r.get(key) or "{}")
            return hb.get("instance") != before and not hb.get("stopped")

        try:
            wait_until(back, 30, 0.2, "n2's new worker beats")
        except Exception:  # noqa: BLE001 - the finding
            # on rayjob.py as it was: end_ray's shutil.rmtree opened the folder's path, a link to
            # Bob's FIFO: root's thread waits for good; the stopping worker waited 10 s for it and
            # left the record, and the next one waits in its start-up sweep before its first beat
            raise AssertionError(f"the worker on n2 did not come back in 30 s after a restart (its part of Bob's job "
                                 f"ended: {ended}); its log ends:\n{c.log('worker-n2')[-1500:]}") from None
        assert ended, c.log("worker-n2")[-3000:]
        # the link is gone (unlinked, not followed); Bob's FIFO is his own, in his own folder
        assert not [p for p in c.root.glob("node-n2/tmp/*/gqr-*") if p.is_symlink()]
    finally:
        _release(c)
