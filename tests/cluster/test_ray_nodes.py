"""Multi-node jobs in cluster mode: a real 2-node Ray cluster on this machine (two Ray nodes,
each declaring its own GPU and its gpuqueue node resource), the scheduler gang-places a
``--nodes 2 --gpus 2`` job on the two Celery nodes, and the job runs on exactly those nodes and
GPUs through Ray: each rank sees the node and ``CUDA_VISIBLE_DEVICES`` the scheduler assigned,
metrics and checkpoints come back, cancel stops every rank, and the GPUs are free afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from gpuqueue.job.raynodes import agent_port_args
from helpers.servers import free_port, wait_until
from training.jobs import logs

from .conftest import TOKENS

pytest.importorskip("ray")

PY = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))

RANKS = r'''
import json, os, sys, time
import gpuqueue
out, ticks = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["RANK"])
with open(out, "a") as f:
    f.write(json.dumps({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "node": os.environ["GPUQUEUE_NODE"],
                        "cuda": os.environ["CUDA_VISIBLE_DEVICES"], "pid": os.getpid(),
                        "ray_node": os.environ["GPUQUEUE_RAY_NODE_ID"],
                        "job": os.environ["GPUQUEUE_JOB_ID"]}) + "\n")
ck = gpuqueue.Checkpointer() if rank == 0 else None
for i in range(1, ticks + 1):
    time.sleep(0.1)
    if rank == 0:
        gpuqueue.log(step=i, loss=1.0 / i)
        if i % 5 == 0:
            ck.save(i, writer=lambda d: open(d + "/s.txt", "w").write(str(i)))
print("rank", rank, "done", flush=True)
'''


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """Two Ray nodes on this machine: the head declares n1's GPU and resource, the other n2's."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    port = free_port()
    procs = []

    def start(args: list[str], name: str, count: int) -> None:
        """Start a node; wait until the cluster has ``count`` nodes. One whose raylet died at start
        (its dashboard agent late on a loaded machine: gpuqueue.job.raynodes.RESTART_NOTE) is
        started again, as the admin's service manager would."""
        for _ in range(3):
            log = open(tmp_path / f"ray-{name}.log", "ab")
            p = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args, *agent_port_args()], env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(p)
            wait_until(lambda: p.poll() is not None or _nodes(address, env) >= count, 120, 1, f"Ray node {name}")
            if p.poll() is None:
                return
        raise AssertionError(f"Ray node {name} exited at start three times: "
                             f"{(tmp_path / f'ray-{name}.log').read_text(errors='replace')[-2000:]}")

    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="gqray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    try:
        start(["--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "3", "--num-gpus", "1",
               "--resources", json.dumps({"gpuqueue-node-n1": 1}), "--include-dashboard", "false",
               "--temp-dir", temp], "n1", 1)
        start(["--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "3", "--num-gpus", "1",
               "--resources", json.dumps({"gpuqueue-node-n2": 1})], "n2", 2)
        yield address, env
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 8  # a graceful stop; Ray's can take 20 s and more here
        for p in reversed(procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in procs:  # what is left of each node's process group
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


def _nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray; ray.init(address=%r, include_dashboard=False, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    try:
        p = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 0
    try:
        return int(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def _ray_node_of(address: str, env: dict[str, str]) -> dict[str, str]:
    """Ray node id -> the gpuqueue node whose resource that Ray node declares."""
    code = ("import json, ray; ray.init(address=%r, include_dashboard=False, logging_level='ERROR'); "
            "print(json.dumps({n['NodeID']: [k for k in n['Resources'] if k.startswith('gpuqueue-node-')] "
            "for n in ray.nodes() if n['Alive']}))" % address)
    p = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    raw = json.loads(p.stdout.strip().splitlines()[-1])
    return {nid: res[0].removeprefix("gpuqueue-node-") for nid, res in raw.items() if res}


def _ranks(path: Path, job: str) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in (json.loads(line) for line in path.read_text().splitlines()) if r["job"] == job]


def test_nodes_2_job_runs_on_the_assigned_nodes_and_gpus_through_ray(cluster_factory, ray_cluster, tmp_path: Path,
                                                                   monkeypatch, jupyter_server_factory) -> None:
    address, ray_env = ray_cluster
    monkeypatch.setenv("RAY_ADDRESS", address)  # the workers' environment: jobs get it
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("GPUQUEUE_PASS_ENV", "RAY_AUTH_MODE")
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, worker_args=("--identities", "none", "--shared-dir",
                                                               str(tmp_path / "shared")))
    script = c.root / "ranks.py"
    script.write_text(RANKS)
    marks = c.root / "ranks.jsonl"
    root = c.client("root")
    job = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2,
                                    "command": [PY, str(script), str(marks), "20"]})["id"]
    rec = c.wait_done([job], 240)[job]
    evs = root.events(job)
    assert rec["state"] == "succeeded", (rec, logs(evs)[-3000:], c.log("worker-n1")[-3000:])
    placement = rec["attempts"][-1]["placement"]
    assert set(placement) == {"n1", "n2"} and all(len(ids) == 1 for ids in placement.values()), placement
    ranks = sorted(_ranks(marks, job), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert ranks[0]["node"] == rec["attempts"][-1]["node"]  # rank 0 next to the worker that reports
    assert {r["node"] for r in ranks} == {"n1", "n2"}
    ray_nodes = _ray_node_of(address, ray_env)
    for r in ranks:  # each rank ran on the Ray node of its gpuqueue node, with that node's GPUs
        assert ray_nodes[r["ray_node"]] == r["node"], (r, ray_nodes)
        assert r["cuda"] == ",".join(str(i) for i in placement[r["node"]]), (r, placement)
    steps = [e["data"]["step"] for e in evs if e["type"] == "metrics"]
    assert steps and max(steps) == 20
    assert [e["data"]["step"] for e in evs if e["type"] == "checkpoint"][-1] == 20
    assert any("trainer" not in s and s.endswith("step-000000020") for e in evs if e["type"] == "info"
               for s in e["data"].get("shared", []))

    # a %%train --nodes 2 cell through a Jupyter server that forwards to the cluster: each rank
    # runs the cell on its node (the other node's rank from a scratch copy of the payload)
    server = jupyter_server_factory(
        gpus=0, args=[f"--GPUQueueApp.api_url={c.url}"], env={"GPUQUEUE_API_TOKEN": TOKENS["alice"]})
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    cell_marks = c.root / "cell.jsonl"
    k.run(f"base = 40; marks = {str(cell_marks)!r}")
    res = k.run("%%train --nodes 2 --gpus 2\nimport json, os\n"
                "open(marks, 'a').write(json.dumps({k: os.environ[k] for k in ('RANK', 'GPUQUEUE_NODE', "
                "'CUDA_VISIBLE_DEVICES', 'GPUQUEUE_RAY_NODE_ID')}) + '\\n')\n"
                "answer = base + 2 + int(os.environ['RANK'])", timeout=240)
    assert res.error is None, (res.error, res.text)
    assert k.run("print(answer)").stdout.strip() == "42"  # rank 0's results
    seen = sorted((json.loads(line) for line in cell_marks.read_text().splitlines()), key=lambda r: r["RANK"])
    assert [r["RANK"] for r in seen] == ["0", "1"], seen
    for r in seen:
        assert ray_nodes[r["GPUQUEUE_RAY_NODE_ID"]] == r["GPUQUEUE_NODE"], (r, ray_nodes)
    assert {r["GPUQUEUE_NODE"] for r in seen} == {"n1", "n2"}
    assert all(r["CUDA_VISIBLE_DEVICES"] == "0" for r in seen)  # each node's one GPU, as placed

    # rank 1 (on n2) fails: rank 0 (n1) says it was stopped because rank 1 failed, not that the
    # job was asked to stop; the launcher's line and the job's error name rank 1 and its error
    # (a cell's exception, from n2's scratch folder; a command's exit code)
    failed = k.run("%%train --nodes 2 --gpus 2\nimport os, sys, time\nif os.environ['RANK'] == '1':\n"
                   "    time.sleep(5)  # rank 0 is in its sleep, its stop handler set\n"
                   "    raise ValueError('rank 1 fails')\ntime.sleep(120)\n", timeout=240)
    assert failed.error is not None and failed.error["evalue"].endswith(
        "failed: rank 1 failed: ValueError: rank 1 fails"), (failed.error, failed.text)
    assert "gpuqueue: rank 1 failed: ValueError: rank 1 fails; the other ranks were stopped" in failed.stderr, failed.text
    assert "gpuqueue: stopped: rank 1 failed (see its error above)" in failed.text, failed.text
    assert "asked to stop" not in failed.text, failed.text
    # and the other way round: rank 0 fails, rank 1 on n2 (a scratch folder) says so
    failed0 = k.run("%%train --nodes 2 --gpus 2\nimport os, sys, time\nif os.environ['RANK'] == '0':\n"
                    "    time.sleep(5)\n    raise ValueError('rank 0 fails')\ntime.sleep(120)\n", timeout=240)
    assert failed0.error is not None and failed0.error["evalue"].endswith(
        "failed: rank 0 failed: ValueError: rank 0 fails"), (failed0.error, failed0.text)
    assert "gpuqueue: stopped: rank 0 failed (see its error above)" in failed0.text, failed0.text
    assert "asked to stop" not in failed0.text, failed0.text
    fails = script.with_name("fails.py")
    fails.write_text("import os, sys, time\nif os.environ['RANK'] == '1':\n    time.sleep(2)\n"
                     "    print('shard 7 is empty', file=sys.stderr, flush=True)\n    sys.exit(3)\n"
                     "time.sleep(120)\n")
    bad = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2, "retries": 0,
                                    "command": [PY, str(fails)]})["id"]
    rec = c.wait_done([bad], 120)[bad]
    # a command's rank: its last line on stderr and its exit code (before: 'rank 1 failed: exit code 3')
    want = "rank 1 failed: shard 7 is empty (exit code 3)"
    assert (rec["state"], rec["error"]) == ("failed", want), rec
    assert f"gpuqueue: {want}; the other ranks were stopped" in logs(root.events(bad)).splitlines()

    # a placement on a node that no Ray node declares, or no Ray address: a message, no traceback
    probe = ("import sys; from gpuqueue.job.raynodes import run_pinned; "
             "sys.exit(run_pinned({'n1': [0], 'n9': [0]}, ['true'], sys.argv[1] or None))")
    for addr, msg in ((address, "no Ray node declares gpuqueue-node-n9: start Ray on n9 with --resources"),
                      ("", "needs the Ray cluster of the GPU nodes: the worker's RAY_ADDRESS")):
        p = subprocess.run([PY, "-c", probe, addr], env=dict(ray_env, PYTHONPATH=os.pathsep.join(sys.path)),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and msg in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]

    # cancel reaches every rank, on every node; the GPUs are free afterwards
    long = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2,
                                     "command": [PY, str(script), str(marks), "3000"]})["id"]
    running = wait_until(lambda: len(_ranks(marks, long)) == 2 and _ranks(marks, long), 120, 0.2, "both ranks up")
    pids = [r["pid"] for r in running]
    assert all(psutil.pid_exists(p) for p in pids)
    root.cancel(long)
    assert c.wait_done([long], 60)[long]["state"] == "cancelled"
    wait_until(lambda: not any(_alive(p) for p in pids), 30, 0.2, "every rank stopped")
    ones = [c.submit("bob", ticks=2, gpus=1) for _ in range(2)]  # one GPU on each node, at once
    done = c.wait_done(ones, 60)
    assert all(j["state"] == "succeeded" for j in done.values())
    assert {j["attempts"][-1]["node"] for j in done.values()} == {"n1", "n2"}

    # a node of the gang lost mid-job (the second node's worker killed -9): the whole gang is
    # requeued as lost, and the ranks on the surviving node are stopped too
    gang = c.client("alice").submit({"kind": "command", "gpus": 2, "nodes": 2,
                                     "command": [PY, str(script), str(marks), "3000"]})["id"]
    running = wait_until(lambda: len(_ranks(marks, gang)) == 2 and _ranks(marks, gang), 120, 0.2, "both ranks up")
    head = root.get(gang)["attempts"][-1]["node"]
    other = "n2" if head == "n1" else "n1"
    for p in c.tree(f"worker-{other}"):
        p.kill()
    wait_until(lambda: (j := root.get(gang))["attempts"][0]["outcome"] == "lost" and j["state"] == "queued", 30, 0.2,
               "the gang requeued")
    wait_until(lambda: not any(_alive(r["pid"]) for r in running), 30, 0.2, "every rank of the lost attempt stopped")
    root.cancel(gang)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

