"""A job on several nodes has its own ``/tmp``, ``/var/tmp`` and ``/dev/shm`` on every node of its
gang (``gpuqueue.attempt.privtmp``, ``gpuqueue.cluster.rayjob``): root workers with per-user
dynamic identities and no shared Ray, so a ``--nodes 2`` job runs its ranks on a Ray of its own,
whose head the runner starts in the job's namespaces on the first node and whose other node the
worker starts in them (``privtmp.exec_as``) on the second. Each rank, on both nodes, makes
``/tmp/x``, ``/var/tmp/v`` and ``/dev/shm/y`` under the same names: none sees the other's, the
node's folders never hold them, another user's job on the node sees none of them, and once the
job ended nothing of it is left in the node's folders or in its identity's (its Ray's folder
included). The cluster lives outside ``/tmp``, which a job's own namespace hides (the worker
would run jobs without one)."""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from helpers.servers import wait_until
from training.jobs import logs

from gpuqueue.attempt import launch, privtmp

from .conftest import Cluster, identity_cluster
from .test_isolation import job_python

pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")

# one rank: make the names, say what it saw and what its /tmp is; then, once told, whether they
# are still its own
RANK = r'''
import json, os, subprocess, sys, time
tag, go, out = sys.argv[1:4]
rank = os.environ["RANK"]
mine = "alice-rank" + rank
files = [f"/tmp/x-{tag}", f"/var/tmp/v-{tag}", f"/dev/shm/y-{tag}"]

def report(**kw):
    with open(out, "a") as f:
        f.write("RANK " + json.dumps(dict(rank=int(rank), node=os.environ["GPUQUEUE_NODE"], **kw)) + "\n")

seen = [f for f in files if os.path.exists(f)]
for f in files:
    with open(f, "w") as w:
        w.write(mine)
child = subprocess.run([sys.executable, "-c", f"print(open('/dev/shm/y-{tag}').read())"], capture_output=True,
                       text=True).stdout.strip()
st = os.stat("/tmp")
ray_dir = os.environ.get("GPUQUEUE_RAY_DIR", "")
report(step="made", seen=seen, child=child, tmp=[st.st_dev, st.st_ino], uid=os.getuid(), ray_dir=ray_dir,
       ray_dir_here=os.path.isdir(ray_dir))
while not os.path.exists(go):
    time.sleep(0.1)
report(step="end", still_mine=[open(f).read() for f in files] == [mine] * 3)
'''

# another user's job: which of the names it sees
LOOK = r'''
import glob, json, sys
tag = sys.argv[1]
seen = [f for f in (f"/tmp/x-{tag}", f"/var/tmp/v-{tag}", f"/dev/shm/y-{tag}") if glob.glob(f)]
print("seen", json.dumps(seen), flush=True)
'''


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for k in ("RAY_ADDRESS", "GPUQUEUE_RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)  # no shared Ray: each multi-node attempt gets its own
    first = 66000 + 50 * random.randrange(40)  # uids of its own (tests/cluster/test_ray_own.py: 62000-64999)

    def scripts(c: Cluster) -> None:
        (c.root / "rank.py").write_text(RANK)
        (c.root / "look.py").write_text(LOOK)
        (c.root / "marks").mkdir(mode=0o777)
        (c.root / "marks").chmod(0o777)  # the ranks (the owner's uid) write there

    with identity_cluster("gq-ray-privtmp-", {"n1": 1, "n2": 1}, setup=scripts,
                          worker_args=("--uid-range", f"{first}-{first + 49}")) as c:
        try:
            yield c
        finally:
            for d in glob.glob("/tmp/gqr-*"):  # a failed run's (on old code: the job's Ray folders)
                try:
                    if first <= os.lstat(d).st_uid < first + 50:
                        shutil.rmtree(d, ignore_errors=True)
                except OSError:
                    pass


def _reports(path: Path, step: str) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    found = [json.loads(m) for m in re.findall(r"RANK (\{.*\})", text)]
    return sorted((r for r in found if r["step"] == step), key=lambda r: r["rank"])


def _procs_of(uid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        try:
            if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except (psutil.Error, TypeError, AttributeError):
            continue
    return out


def test_a_job_on_two_nodes_has_its_own_tmp_and_shared_memory_on_each(cluster: Cluster) -> None:
    why = privtmp.probe(launch.runner_env())
    if why is not None:
        pytest.skip(f"no mount namespace for jobs here: {why}")
    c = cluster
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    env = {"PYTHONPATH": os.pathsep.join([backend, libs])}
    root = c.client("root")
    tag = uuid.uuid4().hex[:8]
    go, marks = c.root / "marks" / "go", c.root / "marks" / "ranks.txt"
    real = [Path(f"/tmp/x-{tag}"), Path(f"/var/tmp/v-{tag}"), Path(f"/dev/shm/y-{tag}")]
    try:
        job = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
                                        "env": env, "command": [py, str(c.root / "rank.py"), tag, str(go),
                                                                str(marks)]})["id"]

        def both_made() -> object:
            j = root.get(job)
            if j["state"] in ("failed", "succeeded", "cancelled"):
                raise AssertionError(f"{j['state']}: {j.get('error')}\n{logs(root.events(job))[-3000:]}\n"
                                     f"{c.log('worker-n1')[-2000:]}\n{c.log('worker-n2')[-2000:]}")
            made = _reports(marks, "made")
            return len(made) == 2 and made

        made = wait_until(both_made, 180, 0.5, "both ranks made their files")
        assert {r["node"] for r in made} == {"n1", "n2"}, made
        uid = made[0]["uid"]
        for r in made:
            # neither rank saw the other's files (on old code both ranks used the node's /tmp: the
            # second found the first's), and its child process reads its /dev/shm
            assert r["seen"] == [] and r["child"] == f"alice-rank{r['rank']}", made
            assert r["uid"] == uid
            # its /tmp is its identity's own folder on its node, on the first node and on the other
            own = os.stat(c.root / f"node-{r['node']}" / "tmp" / str(uid))
            assert r["tmp"] == [own.st_dev, own.st_ino], (r, r["node"])
            # its Ray's folder is named as inside its namespace, and it is there
            assert r["ray_dir"].startswith("/tmp/gqr-") and r["ray_dir_here"], r
        # the node's own folders hold none of the names, nor the job's Ray folders
        assert [p for p in real if os.path.lexists(p)] == []
        assert [d for d in glob.glob("/tmp/gqr-*") if os.lstat(d).st_uid == uid] == []

        # another user's job on a node of the gang, meanwhile: sees none of them
        bob = c.client("bob")
        look = bob.submit({"kind": "command", "gpus": 0, "retries": 0, "env": env,
                           "command": [py, str(c.root / "look.py"), tag]})["id"]
        rec = c.wait_done([look], 60)[look]
        said = logs(bob.events(look))
        assert rec["state"] == "succeeded", said
        assert "seen []" in said, said

        go.touch()
        rec = c.wait_done([job], 120)[job]
        assert rec["state"] == "succeeded", (rec.get("error"), logs(root.events(job))[-3000:])
        ended = _reports(marks, "end")
        assert [r["still_mine"] for r in ended] == [True, True], ended  # neither rank's names were touched

        # nothing of the job is left: no process of its uid, nothing in the node's /tmp, /var/tmp,
        # /dev/shm, no Ray folder in the identity's temporary folder on either node
        wait_until(lambda: not _procs_of(uid), 60, 0.5, "no process of the owner's uid")
        assert [p for p in real if os.path.lexists(p)] == []
        assert [d for d in glob.glob("/tmp/gqr-*") if os.lstat(d).st_uid == uid] == []
        wait_until(lambda: not list(c.root.glob(f"node-*/tmp/{uid}/gqr-*")), 30, 0.5, "the job's Ray folders removed")
        assert "each job gets its own /tmp, /var/tmp and /dev/shm" in c.log("worker-n1")
    finally:
        for p in real:
            if os.path.lexists(p):
                p.unlink()


# one rank: a temporary file through Python's tempfile (TMPDIR), where it is and what named it
TEMPFILE = r'''
import json, os, sys, tempfile
fd, path = tempfile.mkstemp(prefix="rank-")
os.write(fd, b"x")
os.close(fd)
st = os.stat(os.path.dirname(path))
with open(sys.argv[1], "a") as f:
    f.write("RANK " + json.dumps(dict(rank=int(os.environ["RANK"]), node=os.environ["GPUQUEUE_NODE"], step="tmp",
                                      path=path, dir=[st.st_dev, st.st_ino], uid=os.getuid(),
                                      tmpdir=os.environ.get("TMPDIR"), home=os.environ.get("HOME"))) + "\n")
os.unlink(path)
'''


def test_each_rank_of_a_job_on_two_nodes_has_its_own_nodes_tmpdir_and_home(cluster: Cluster) -> None:
    """Python's tempfile works in every rank and writes in its own node's private tmp of the job;
    TMPDIR and HOME (a dynamic identity's) name that node's folders, not the first node's (on old
    code the rank on n2 had TMPDIR and HOME of n1's state folder: another node's, not there on a
    real cluster unless the state folders match, and never its own /tmp)."""
    c = cluster
    py, libs = job_python()
    backend = str(Path(__file__).resolve().parents[2] / "backend")
    (c.root / "tempfile_rank.py").write_text(TEMPFILE)
    out = c.root / "marks" / f"tmp-{uuid.uuid4().hex[:8]}.txt"
    root = c.client("root")
    job = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0, "python": py,
                                    "env": {"PYTHONPATH": os.pathsep.join([backend, libs])},
                                    "command": [py, str(c.root / "tempfile_rank.py"), str(out)]})["id"]
    rec = c.wait_done([job], 180)[job]
    assert rec["state"] == "succeeded", (rec.get("error"), logs(root.events(job))[-3000:])
    ranks = _reports(out, "tmp")
    assert {r["node"] for r in ranks} == {"n1", "n2"}, ranks
    for r in ranks:
        state = c.root / f"node-{r['node']}"
        own = os.stat(state / "tmp" / str(r["uid"]))
        assert (r["tmpdir"], r["home"]) == (str(state / "tmp" / str(r["uid"])), str(state / "home" / str(r["uid"]))), r
        # the file is in its node's own temporary folder of the identity: the job's /tmp there
        assert r["dir"] == [own.st_dev, own.st_ino], r
