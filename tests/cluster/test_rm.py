"""`gpuqueue rm` (``DELETE /jobs/ID``) in a cluster: a user deletes her finished jobs and what the
store keeps for them (record, events, results, and the job's entries in her kept sets), and the
workers' next shared sweep deletes its checkpoints from the shared root and gives the room back
to her ``max_shared_gb``. Real redis-server, scheduler, API, CLI and Celery worker with a
``--shared-dir`` swept every half second. The same verb in embedded mode:
``tests/jupyter/test_rest_api.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import requests

from gpuqueue.job.payload import build_payload
from gpuqueue.queue.errors import Conflict, NotFound
from helpers.servers import wait_until

from .conftest import PY, TOKENS, Cluster

SAVE = r'''
import gpuqueue
gpuqueue.Checkpointer().save(1, writer=lambda d: open(d + "/w.bin", "wb").write(b"w" * 300_000))
print("saved", flush=True)
'''
HOLD = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]):\n    time.sleep(0.1)\n"


def _delete(c: Cluster, user: str, job_id: str) -> requests.Response:
    return requests.delete(f"{c.url}gpuqueue/api/jobs/{job_id}", headers={"Authorization": f"token {TOKENS[user]}"},
                           timeout=10)


def test_a_user_deletes_her_finished_jobs_and_the_sweep_gives_back_their_room(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o700)
    c = cluster_factory({"n1": 2}, worker_args=("--identities", "none", "--shared-dir", str(shared),
                                                "--shared-sweep", "0.5"))
    r = c.redis_client()
    alice, bob, root = c.client("alice"), c.client("bob"), c.client("root")

    saved = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", SAVE]})["id"]
    payload, inputs, outputs = build_payload("y = b'r' * 1000", {}, inputs=[], outputs=["y"])
    cell = alice.submit({"kind": "cell", "gpus": 0, "retries": 0, "inputs": inputs, "outputs": outputs}, payload)["id"]
    bobs = bob.submit({"kind": "command", "gpus": 0, "retries": 0, "command": [PY, "-c", "print(1)"]})["id"]
    done = c.wait_done([saved, cell, bobs], 90)
    assert {j["state"] for j in done.values()} == {"succeeded"}, done
    wait_until(lambda: int(r.hget("gq:shared:used:alice", saved) or 0) > 0, 30, 0.1, "the checkpoint counted")
    assert (shared / "jobs" / saved).is_dir()
    assert r.hget("gq:results:alice", cell) and r.hget("gq:logs:alice", saved) and r.hget("gq:logs:alice", cell)

    # a running job and a queued one (it resumes from `saved`, and waits for both GPUs): 409, cancel first
    go = tmp_path / "go"
    running = alice.submit({"kind": "command", "gpus": 1, "retries": 0, "command": [PY, "-c", HOLD, str(go)]})["id"]
    wait_until(lambda: alice.get(running)["state"] == "running", 60, 0.1, "the holding job running")
    queued = alice.submit({"kind": "command", "gpus": 2, "retries": 0, "resume_from": saved,
                           "command": [PY, "-c", "print(1)"]})["id"]
    assert alice.get(queued)["state"] == "queued"
    # the GPUs set aside for her blocked job: she sees its id in the queue summary, bob does not
    wait_until(lambda: alice.queue()["pools"]["gpu"]["reserved_for"] == [queued], 30, 0.1,
               "the reservation published")
    assert bob.queue()["pools"]["gpu"]["reserved_for"] == []
    assert root.queue()["pools"]["gpu"]["reserved_for"] == [queued]
    for job_id in (running, queued):
        res = _delete(c, "alice", job_id)
        assert res.status_code == 409, res.text
        assert f"cancel it first: gpuqueue cancel {job_id}" in res.json()["message"], res.text
    res = _delete(c, "alice", saved)  # `queued` resumes from it
    assert res.status_code == 409 and saved in res.json()["message"] and queued in res.json()["message"], res.text
    assert "--resume-from" in res.json()["message"], res.text

    # another user's job is the 404 of a job that does not exist
    missing = _delete(c, "bob", "j-000000000000")
    res = _delete(c, "bob", saved)
    assert (res.status_code, missing.status_code) == (404, 404), (res.text, missing.text)
    assert res.json()["message"] == missing.json()["message"].replace("j-000000000000", saved), res.text
    assert alice.get(saved)["state"] == "succeeded"

    alice.cancel(queued)
    c.wait_done([queued], 30)
    logs_before = int(r.get("gq:logssum:alice") or 0)
    logs_of = int(r.hget("gq:logs:alice", saved).split()[0]) + int(r.hget("gq:logs:alice", cell).split()[0])
    rm = c.cli("alice", "rm", saved, cell, "j-000000000000", running)
    assert rm.returncode == 1, rm.stdout + rm.stderr
    out = rm.stdout.splitlines()
    assert [line.split(":")[0] for line in out] == [saved, cell], rm.stdout
    assert all(": deleted (record, events, logs, results, payload); its checkpoints on the workers' shared root"
               in line for line in out), rm.stdout
    err = rm.stderr.splitlines()
    assert err[0].startswith("j-000000000000: not deleted: no job 'j-000000000000'"), rm.stderr
    assert err[1].startswith(f"{running}: not deleted: job {running} is running") and "gpuqueue cancel" in err[1], rm.stderr

    # gone for her: not listed, no record, events or results; nothing of them left in the store
    assert {j["id"] for j in alice.list()} == {running, queued}
    for read in (alice.get, alice.events, alice.result):
        for job_id in (saved, cell):
            with pytest.raises(NotFound):
                read(job_id)
    assert not [k for k in r.keys("gq:*") if (saved in k and k != f"gq:shared:job:{saved}") or cell in k]
    for kept in ("results", "logs"):
        for job_id in (saved, cell):
            assert r.hget(f"gq:{kept}:alice", job_id) is None and r.zscore(f"gq:{kept}at:alice", job_id) is None
    assert int(r.get("gq:logssum:alice") or 0) == logs_before - logs_of
    assert int(r.get("gq:resultssum:alice") or 0) == 0
    assert r.zscore("gq:done:alice", saved) is None and r.hget("gq:inputs:alice", cell) is None

    # the sweep deletes its folder on the shared root and gives back what it counted
    wait_until(lambda: not (shared / "jobs" / saved).exists(), 30, 0.1, "the deleted job's folder swept")
    wait_until(lambda: r.hget("gq:shared:used:alice", saved) is None, 10, 0.1, "its bytes given back")
    assert not r.exists(f"gq:shared:job:{saved}") and not int(r.hget("gq:shared:used:alice", "total") or 0)

    # a queue admin deletes another user's finished job; bob's own rm of it then finds none
    assert root.delete_job(bobs)["deleted"][0] == "record"
    with pytest.raises(NotFound):
        bob.get(bobs)
    with pytest.raises(Conflict):
        alice.delete_job(running)
    go.touch()
    c.wait_done([running], 60)
    assert alice.delete_job(running)["id"] == running
    assert {j["id"] for j in alice.list()} == {queued}
