"""`--resume-from JOB_ID[/step-N]` in cluster mode (docs/training.md, "Resume as a new job"): a
job that saved checkpoints on node n1 is resumed from by a new job that runs on node n2, whose
worker copies the checkpoint from the workers' shared root (``gpuqueue.cluster.shared_resume``).
Real redis-server, scheduler daemon, API service, Celery workers declaring GPUs, a shared root
folder; the `gpuqueue` command and a real kernel's magic as a user runs them."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any, Callable

import pytest
import requests

from helpers.servers import wait_until
from training.jobs import logs

from .conftest import PY, TOKENS, Cluster, assert_private_tmp, outside_tmp
from .test_isolation import job_python

SAVE = '''
import gpuqueue
ck = gpuqueue.Checkpointer(max_checkpoints=5)
for step in (1, 2):
    ck.save(step, {"step": step, "w": step * 1.5})
print("saved 1 and 2", flush=True)
'''
RESUME = '''
import gpuqueue
state = gpuqueue.Checkpointer().load()
print("resumed from step", state["step"], flush=True)
'''


def _refusal(c: Cluster, user: str, ref: str) -> str:
    """The API's answer to a submit that resumes from ``ref`` (a 400)."""
    r = requests.post(f"{c.url}gpuqueue/api/jobs", headers={"Authorization": f"token {TOKENS[user]}"}, timeout=10,
                      json={"spec": {"kind": "command", "gpus": 1, "command": [PY, "-c", "1"], "resume_from": ref}})
    assert r.status_code == 400, r.text
    return str(r.json()["message"])


def _only_n1_then_only_n2(cluster_factory: Callable[..., Cluster], tmp_path: Path, *worker_args: str) -> Cluster:
    c = cluster_factory(nodes={"n1": 1, "n2": 1}, start=False, worker_args=("--identities", "none", *worker_args))
    c.start_daemon()
    c.start_worker("n1")
    c.start_api()
    c.wait_nodes({"n1"})
    return c


def _move_to_n2(c: Cluster) -> None:
    """Stop n1's worker (its jobs ended) and start n2's: the next job can only run on n2."""
    c.kill("worker-n1", signal.SIGTERM)
    root = c.client("root")
    wait_until(lambda: "n1" not in root.queue().get("nodes", {}), c.node_timeout + 10, 0.1, "n1 gone")
    c.start_worker("n2")
    c.wait_nodes({"n2"})


def _saved_on_n1(c: Cluster, tmp_path: Path) -> str:
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [PY, str(script)], "name": "saves"})["id"]
    rec = c.wait_done([job], 60)[job]
    assert rec["state"] == "succeeded" and rec["attempts"][0]["node"] == "n1", rec
    return str(job)


def test_a_job_on_another_node_resumes_from_a_jobs_checkpoint_by_reference(
        cluster_factory: Callable[..., Cluster], jupyter_server_factory: Callable[..., Any], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    c = _only_n1_then_only_n2(cluster_factory, tmp_path, "--shared-dir", str(shared))
    first = _saved_on_n1(c, tmp_path)
    assert (shared / "jobs" / first / "checkpoints" / "default" / "step-000000002" / "COMPLETE").is_file()

    # what `gpuqueue checkpoints` lists: the reference to pass, and where the files were saved (n1's disk)
    out = c.cli("alice", "checkpoints", first)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"step 1: --resume-from {first}/step-1" and lines[2] == f"step 2: --resume-from {first}/step-2", lines
    n1_disk = c.root / "node-n1" / "jobs" / first / "checkpoints" / "default"
    assert lines[1] == f"    saved on node n1: {n1_disk / 'step-000000001'}", lines
    assert lines[3] == f"    saved on node n1: {n1_disk / 'step-000000002'}", lines

    _move_to_n2(c)
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    alice = c.client("alice")
    second = alice.submit({"kind": "command", "gpus": 1, "command": [PY, str(script)],
                           "resume_from": f"{first}/step-1"})["id"]
    rec = c.wait_done([second], 60)[second]
    logs = c.cli("alice", "logs", second)
    assert rec["state"] == "succeeded", (rec, logs.stdout, logs.stderr)
    assert rec["attempts"][0]["node"] == "n2", rec
    assert "resumed from step 1\n" in logs.stdout, logs.stdout
    # the job's own folder on n2 holds the copy it loaded; n2 never had the first job's folder
    copy = c.root / "node-n2" / "jobs" / second / "resume" / first / "default" / "step-000000001"
    assert (copy / "COMPLETE").is_file() and (copy / "state.pt").is_file()
    assert f"[gpuqueue] info: loaded checkpoint step 1 from {copy}\n" in logs.stderr, logs.stderr
    assert not (c.root / "node-n2" / "jobs" / first).exists()

    # the same from a notebook: the magic's listing and `%%train --resume-from JOB_ID` (its latest)
    server = jupyter_server_factory(gpus=0, env={"GPUQUEUE_API_URL": c.url, "GPUQUEUE_API_TOKEN": TOKENS["alice"]})
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    listed = k.run(f"%gpuqueue checkpoints {first}").stdout.splitlines()
    assert listed[:4] == lines[:4], listed
    cell = k.run(f"%%train --gpus 1 --resume-from {first}\n{RESUME}", timeout=90)
    assert cell.error is None, cell.text
    assert "resumed from step 2" in cell.stdout, cell.text


def test_another_users_job_is_refused_as_a_missing_one_and_bad_references_name_the_fix(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    c = _only_n1_then_only_n2(cluster_factory, tmp_path, "--shared-dir", str(tmp_path / "shared"))
    first = _saved_on_n1(c, tmp_path)
    ghost = "j-0123456789ab"
    theirs, missing = _refusal(c, "bob", first), _refusal(c, "bob", ghost)
    assert theirs == (f"--resume-from {first}: you have no job {first}; give one of your own jobs' ids "
                      "(`%gpuqueue list`, `gpuqueue ls`): only your own jobs' checkpoints can be resumed from"), theirs
    assert theirs.replace(first, "J") == missing.replace(ghost, "J")  # the same words: nothing says it exists
    assert _refusal(c, "bob", f"{first}/step-1").replace(first, "J") == \
        _refusal(c, "bob", f"{ghost}/step-1").replace(ghost, "J")
    # an admin too resumes only from their own jobs: the new job would be theirs
    assert _refusal(c, "root", first).replace(first, "J") == _refusal(c, "root", ghost).replace(ghost, "J")

    assert _refusal(c, "alice", f"{first}/step-9") == (
        f"--resume-from {first}/step-9: job {first} has no complete checkpoint at step 9; it has steps 1, 2 "
        f"(`%gpuqueue checkpoints {first}` lists them)")
    malformed = _refusal(c, "alice", f"{first}/step-1/../../x")
    assert f"{first} is a job id, but the rest is not a checkpoint of it: write {first} (its latest " in malformed
    assert "is a job id" in _refusal(c, "alice", f"{first}/" + "x" * 300)

    # the terminal: `gpuqueue submit --resume-from`, refused in the same words, no traceback
    out = c.cli("bob", "submit", "--gpus", "1", "--resume-from", first, "--", PY, "-c", "1")
    assert out.returncode == 1 and out.stderr == f"gpuqueue: {theirs}\n", out.stderr
    assert c.client("bob").list() == []


def test_without_a_shared_root_the_job_fails_saying_what_the_admin_must_set(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    c = _only_n1_then_only_n2(cluster_factory, tmp_path)
    first = _saved_on_n1(c, tmp_path)
    _move_to_n2(c)
    second = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [PY, "-c", "1"],
                                       "resume_from": first})["id"]
    rec = c.wait_done([second], 60)[second]
    assert rec["state"] == "failed" and len(rec["attempts"]) == 1, rec  # not retried: a retry meets the same
    assert rec["error"] == (f"the job could not start on node n2: --resume-from {first}: node n2 keeps checkpoints "
                            f"on its own disk only, so it cannot fetch job {first}'s; resuming from another job's "
                            "checkpoint on any node needs the workers' shared root (`gpuqueue worker --shared-dir`, "
                            "docs/deploy.md): ask your admin"), rec["error"]


def test_a_checkpoint_that_never_reached_the_shared_root_fails_the_job_saying_so(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    """The API checks a reference against the job's checkpoint records; one over the root's
    --shared-max-gb stayed on the node that saved it, and the worker of another node says so."""
    c = _only_n1_then_only_n2(cluster_factory, tmp_path, "--shared-dir", str(tmp_path / "shared"),
                              "--shared-max-gb", "0.0000001")  # 100 bytes: no checkpoint is copied
    first = _saved_on_n1(c, tmp_path)
    _move_to_n2(c)
    second = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [PY, "-c", "1"],
                                       "resume_from": f"{first}/step-2"})["id"]
    rec = c.wait_done([second], 60)[second]
    assert rec["state"] == "failed" and len(rec["attempts"]) == 1, rec
    assert rec["error"] == (f"the job could not start on node n2: --resume-from {first}/step-2: the step 2 checkpoint "
                            f"of job {first} is not on the workers' shared root: it stayed on the node that saved it "
                            "(over the root's --shared-max-gb, or its copy failed: that job's log says which), or it "
                            f"was deleted since; `%gpuqueue checkpoints {first}` lists its checkpoints"), rec["error"]


SAVE_FILES = '''
import gpuqueue
ck = gpuqueue.Checkpointer(max_checkpoints=5)
for step in (1, 2):
    ck.save(step, writer=lambda d: open(d + "/s.txt", "w").write(f"weights {step}"))
'''
RESUME_FILES = '''
import os, gpuqueue
point = gpuqueue.Checkpointer().resume_point()
print("resumed from step", point.step, "with", open(point.path + "/s.txt").read(), "as uid", os.getuid(), flush=True)
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the workers run jobs under the users' own uids")
def test_under_the_owners_own_uid_the_copy_is_the_new_jobs_own(redis_factory: Callable[..., Any]) -> None:
    """Workers running as root, jobs under their users' own uids: the checkpoint copied from the
    root for a --resume-from JOB_ID is the new job's (its uid's, mode 700), which reads it."""
    base = outside_tmp("gq-resume-ids-")  # 0711; out of /tmp: each job gets its own /tmp, as where the unit ships
    c = Cluster(base / "cluster", redis_factory(appendonly=True), {"n1": 1, "n2": 1},
                worker_args=("--shared-dir", str(base / "shared")))
    c.root.chmod(0o755)
    py, libs = job_python()
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "backend"), libs])}
    (c.root / "save.py").write_text(SAVE_FILES)
    (c.root / "resume.py").write_text(RESUME_FILES)
    try:
        c.start_daemon()
        c.start_worker("n1")
        c.start_api()
        c.wait_nodes({"n1"})
        alice = c.client("alice")
        first = alice.submit({"kind": "command", "gpus": 1, "command": [py, str(c.root / "save.py")], "env": env})["id"]
        assert c.wait_done([first], 60)[first]["state"] == "succeeded", logs(alice.events(first))
        _move_to_n2(c)
        second = alice.submit({"kind": "command", "gpus": 1, "command": [py, str(c.root / "resume.py")], "env": env,
                               "resume_from": first})["id"]
        rec = c.wait_done([second], 60)[second]
        out = logs(alice.events(second))
        assert rec["state"] == "succeeded" and rec["attempts"][0]["node"] == "n2", out
        assert_private_tmp(c)
        work = c.root / "node-n2" / "work" / second
        uid = work.stat().st_uid
        assert uid != 0 and f"resumed from step 2 with weights 2 as uid {uid}" in out.splitlines(), out
        for p in (work / "resume", work / "resume" / first / "default" / "step-000000002"):
            assert (p.stat().st_uid, p.stat().st_mode & 0o777) == (uid, 0o700), p
        assert (work / "resume" / first / "default" / "step-000000002" / "s.txt").stat().st_uid == uid
    finally:
        c.close()
        shutil.rmtree(base, ignore_errors=True)


FORGED = '''
import gpuqueue
from gpuqueue.job import channel
for data in ({"step": 5, "name": ["a", "list"]}, {"step": 6, "rotated": 5}, {"step": 7, "rotated": [[1]]},
             {"step": 8, "metrics": "x"}, {"step": True}, {"step": "9"}):
    channel.emit("checkpoint", data)  # records no Checkpointer writes: the job writes its own
ck = gpuqueue.Checkpointer(max_checkpoints=5)
for step in (1, 2):
    ck.save(step, {"step": step})
'''


def test_checkpoint_records_a_job_forges_break_no_submit_that_resumes_from_it(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    """A job writes its own checkpoint records: ones no Checkpointer writes (a list for a name, a
    number for ``rotated``) are left out of what a reference may name, and the API answers a submit
    that resumes from that job with the checkpoints it has (was: 500, 'internal error')."""
    c = _only_n1_then_only_n2(cluster_factory, tmp_path)
    script = tmp_path / "forged.py"
    script.write_text(FORGED)
    job = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [PY, str(script)]})["id"]
    assert c.wait_done([job], 60)[job]["state"] == "succeeded"
    assert _refusal(c, "alice", f"{job}/step-9") == (
        f"--resume-from {job}/step-9: job {job} has no complete checkpoint at step 9; it has steps 1, 2, 6, 7, 8 "
        f"(`%gpuqueue checkpoints {job}` lists them)")
    listed = c.cli("alice", "checkpoints", job)
    assert listed.returncode == 0 and f"step 2: --resume-from {job}/step-2" in listed.stdout, listed


def test_a_source_job_deleted_between_submit_and_start_fails_the_new_job_as_a_missing_one(
        cluster_factory: Callable[..., Cluster], tmp_path: Path) -> None:
    """The worker checks the reference again at start: a source job whose record is gone since the
    submit (--keep-finished) is refused in the words of a job that does not exist, though its
    checkpoint is still on the shared root (the sweep has not run yet)."""
    shared = tmp_path / "shared"
    c = _only_n1_then_only_n2(cluster_factory, tmp_path, "--shared-dir", str(shared))
    first = _saved_on_n1(c, tmp_path)
    c.kill("worker-n1", signal.SIGTERM)  # no node: the new job waits
    root = c.client("root")  # (a job submitted before the daemon has seen n1 go is placed there and lost)
    wait_until(lambda: "n1" not in root.queue().get("nodes", {}), c.node_timeout + 10, 0.1, "n1 gone")
    second = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [PY, "-c", "1"],
                                       "resume_from": first})["id"]
    r = c.redis_client()
    r.delete(f"gq:job:{first}")  # as the daemon's --keep-finished expiry deletes the record
    assert (shared / "jobs" / first / "checkpoints" / "default" / "step-000000002" / "COMPLETE").is_file()
    c.start_worker("n2")
    rec = c.wait_done([second], 60)[second]
    assert rec["state"] == "failed" and len(rec["attempts"]) == 1, rec
    assert rec["error"] == (f"the job could not start on node n2: --resume-from {first}: you have no job {first}; "
                            "give one of your own jobs' ids (`%gpuqueue list`, `gpuqueue ls`): only your own jobs' "
                            "checkpoints can be resumed from"), rec["error"]
    assert not (c.root / "node-n2" / "jobs" / second / "resume").exists()
