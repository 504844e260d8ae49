"""Checkpoints on the workers' shared root (``--shared-dir``): a HuggingFace Trainer job killed
with its node, or preempted by the scheduler for a high-priority job, resumes on the other node
from its last checkpoint and ends with the weights of an uninterrupted run. Real redis-server,
scheduler, API, two Celery workers with their own local folders, one shared root (a folder, or
an s3:// bucket of a moto server in server mode, reached through s3fs)."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers.servers import wait_until
from training.jobs import SCRIPTS, by_attempt, logs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

PY = sys.executable


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final weights of the same script, uninterrupted, outside the queue."""
    out = tmp_path_factory.mktemp("ref")
    subprocess.run([PY, str(SCRIPTS / "hf_train.py"), str(out)], check=True, capture_output=True, cwd=out,
                   env=dict(os.environ, GPUQUEUE_HF_HOOK="0"))
    return torch.load(out / "final.pt")


def _shared_cluster(cluster_factory, tmp_path: Path, root: str, options: dict[str, str] | None = None):
    args = ["--identities", "none", "--shared-dir", root]
    if options is not None:
        f = tmp_path / "shared-options.json"
        f.touch(mode=0o600)
        f.write_text(json.dumps({"client_kwargs": {"endpoint_url": options["endpoint_url"]},
                                 "key": options["key"], "secret": options["secret"]}))
        args += ["--shared-options", str(f)]
    return cluster_factory(nodes={"n1": 1, "n2": 1}, worker_args=tuple(args),
                           config_extra="[policy]\nmin_runtime = 0\ngrace = 30\n")


def _submit_hf(c, out: Path, step_sleep: float = 0.12, **spec: Any) -> str:
    body = {"kind": "command", "gpus": 1, "command": [PY, str(SCRIPTS / "hf_train.py"), str(out)],
            "env": {"STEP_SLEEP": str(step_sleep)}, "cwd": str(out.parent), **spec}
    return c.client("alice").submit(body)["id"]


def _shared_steps(evs: list[dict[str, Any]]) -> list[str]:
    return [s for e in evs if e["type"] == "info" for s in e["data"].get("shared", [])]


def _wait_running_with_copy(c, job: str, step: str, timeout: float = 120) -> str:
    """Wait until ``job`` runs and its checkpoint ``step`` is on the shared root; its node."""
    root = c.client("root")

    def seen() -> Any:
        j = root.get(job)
        if j["state"] in ("succeeded", "failed", "cancelled"):
            raise AssertionError(f"{job} ended early: {logs(root.events(job))[-3000:]}")
        return j["state"] == "running" and any(s.endswith(step) for s in _shared_steps(root.events(job))) and \
            j["attempts"][-1]["node"]

    return wait_until(seen, timeout, 0.1, f"{job}'s checkpoint {step} on the shared root")


def _kill_node(c, node: str) -> None:
    """kill -9 of the worker's whole process tree (worker, fork server, runners, the job)."""
    procs = c.tree(f"worker-{node}")
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    c.procs[f"worker-{node}"].wait(15)


def _same_weights(reference: dict[str, Any], out: Path) -> None:
    b = torch.load(out / "final.pt")
    assert reference.keys() == b.keys()
    for k in reference:
        assert torch.allclose(reference[k], b[k], atol=1e-6), k


def _check_resumed(c, job: str, rec: dict[str, Any], outcomes: list[str], min_step: int) -> int:
    evs = c.client("root").events(job)
    assert rec["state"] == "succeeded", logs(evs)[-3000:]
    assert [a["outcome"] for a in rec["attempts"]] == outcomes
    first, second = rec["attempts"][0], rec["attempts"][-1]
    assert first["node"] != second["node"], rec["attempts"]
    atts = by_attempt(evs)
    resumed = [e["data"]["resumed_step"] for e in atts[-1] if e["type"] == "info" and "resumed_step" in e["data"]]
    assert len(resumed) == 1 and resumed[0] >= min_step > 0, resumed
    steps2 = [e["data"]["step"] for e in atts[-1] if e["type"] == "metrics" and "loss" in e["data"]]
    assert min(steps2) == resumed[0] + 1 and max(steps2) == 40
    return resumed[0]


def _kill_test(cluster_factory, tmp_path: Path, reference: dict[str, Any], root: str, opts=None) -> Any:
    c = _shared_cluster(cluster_factory, tmp_path, root, opts)
    out = tmp_path / "run"
    out.mkdir()
    job = _submit_hf(c, out)
    node = _wait_running_with_copy(c, job, "step-000000010")
    _kill_node(c, node)
    rec = c.wait_done([job], 240)[job]
    step = _check_resumed(c, job, rec, ["lost", "succeeded"], 10)
    assert step in (10, 20, 30), step
    # each node's own folder: the second node got the checkpoint from the root, not from the first's disk
    first_node, other = rec["attempts"][0]["node"], rec["attempts"][-1]["node"]
    assert (c.root / f"node-{first_node}" / "jobs" / job / "checkpoints").is_dir()
    assert (c.root / f"node-{other}" / "jobs" / job / "checkpoints").is_dir()
    _same_weights(reference, out)
    return c


def test_hf_job_killed_with_its_node_resumes_on_the_other_node_from_the_shared_root(
        cluster_factory, tmp_path: Path, reference) -> None:
    shared = tmp_path / "shared"
    _kill_test(cluster_factory, tmp_path, reference, str(shared))
    names = sorted(p.name for p in shared.glob("jobs/*/checkpoints/trainer-0/step-*"))
    assert "step-000000040" in names and len(names) <= 3, names
    assert all((p / "COMPLETE").exists() for p in shared.glob("jobs/*/checkpoints/trainer-0/step-*"))


def test_hf_job_killed_with_its_node_resumes_from_an_s3_root(cluster_factory, tmp_path: Path, reference, moto_s3,
                                                             monkeypatch) -> None:
    # the workers also have the usual AWS variables; no job may see them, nor the options file
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "worker-key-id-123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-456")
    c = _kill_test(cluster_factory, tmp_path, reference, "s3://ckpts/gq", moto_s3)
    spy = c.client("alice").submit({"kind": "command", "gpus": 1, "command": [
        PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]})["id"]
    assert c.wait_done([spy], 60)[spy]["state"] == "succeeded"
    seen = logs(c.client("root").events(spy))
    assert "GPUQUEUE_JOB_ID" in seen
    for secret in ("worker-key-id-123", "worker-secret-456", moto_s3["secret"], moto_s3["key"],
                   "shared-options", "s3://ckpts", "AWS_"):
        assert secret not in seen, secret
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_s3["endpoint_url"]}, key=moto_s3["key"],
                           secret=moto_s3["secret"])
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.glob("ckpts/gq/jobs/*/checkpoints/trainer-0/step-*"))
    assert "step-000000040" in names, names


def test_job_preempted_by_the_scheduler_resumes_on_the_other_node(cluster_factory, tmp_path: Path, reference) -> None:
    c = _shared_cluster(cluster_factory, tmp_path, str(tmp_path / "shared"))
    out = tmp_path / "run"
    out.mkdir()
    victim = _submit_hf(c, out, priority="low", preemptible=True)
    node = _wait_running_with_copy(c, victim, "step-000000010")
    other = "n2" if node == "n1" else "n1"
    # the other node is busy with a job that is not preemptible
    filler = c.submit("bob", ticks=1200, preemptible=False)  # cancelled once the victim is preempted
    wait_until(lambda: c.client("root").get(filler)["state"] == "running", 30, 0.1, "the filler running")
    assert c.client("root").get(filler)["attempts"][-1]["node"] == other
    # a high-priority job needs a GPU: the scheduler takes the victim's
    high = c.submit("bob", ticks=100, priority="high")
    wait_until(lambda: c.client("root").get(victim)["attempts"][0].get("outcome") == "preempted", 120, 0.1,
               "the victim preempted")
    c.client("bob").cancel(filler)  # the other node comes free while the high job runs (10 s)
    jobs = c.wait_done([victim, high, filler], 300)
    rec = jobs[victim]
    assert jobs[high]["state"] == "succeeded" and jobs[high]["attempts"][-1]["node"] == node
    step = _check_resumed(c, victim, rec, ["preempted", "succeeded"], 11)
    evs = c.client("root").events(victim)
    first = by_attempt(evs)[0]
    assert "stopped at step" in logs(first)
    saved = [e["data"]["step"] for e in first if e["type"] == "checkpoint"]
    assert saved[-1] == step  # the save on the notice, then resumed from it on the other node
    assert rec.get("failures", 0) == 0 and rec.get("preemptions", 1) == 1  # a preemption is no failure
    _same_weights(reference, out)


def test_a_storage_error_fails_the_attempt_with_a_clear_message(cluster_factory, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    c = _shared_cluster(cluster_factory, tmp_path, str(shared))
    out = tmp_path / "run"
    out.mkdir()
    job = _submit_hf(c, out, step_sleep=0.2, retries=0)
    wait_until(lambda: c.client("root").get(job)["state"] == "running", 60, 0.1, "the job running")
    # the job's place on the root is broken (a file where its folder goes): no copy can be made
    (shared / "jobs").mkdir(parents=True, exist_ok=True)
    (shared / "jobs" / job).write_text("not a folder")
    wait_until(lambda: any(e["type"] == "warning" and e["data"].get("storage_error")
                           for e in c.client("root").events(job)), 60, 0.1, "the failed copy told")
    c.client("root").preempt(job)  # it saves on the notice, and would resume from that save
    rec = c.wait_done([job], 240)[job]
    evs = c.client("root").events(job)
    assert rec["state"] == "failed", rec
    assert rec["attempts"][-1]["outcome"] == "failed"
    msg = rec["error"] or rec["attempts"][-1].get("message") or ""
    assert re.search(r"cannot copy checkpoint trainer-0/step-0+\d+ to the shared root", msg), (msg, rec)
    assert "not on the shared root" in msg
    told = [e["data"]["message"] for e in evs if e["type"] == "warning" and e["data"].get("storage_error")]
    assert told and "trying again at the next save" in told[0], told


def test_a_worker_whose_shared_root_is_not_usable_refuses_to_start(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.run([PY, "-m", "gpuqueue.cli", "worker", "--redis", "redis://127.0.0.1:1", "--node", "x", "--gpus", "1",
                        "--identities", "none", "--state-dir", str(tmp_path / "st"), "--shared-dir", str(blocked / "root")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2
    assert f"gpuqueue worker: the shared root {blocked / 'root'} is not usable" in p.stderr
    assert "Traceback" not in p.stderr
    # the same from $GPUQUEUE_SHARED_DIR
    p = subprocess.run([PY, "-m", "gpuqueue.cli", "worker", "--redis", "redis://127.0.0.1:1", "--node", "x", "--gpus", "1",
                        "--identities", "none", "--state-dir", str(tmp_path / "st")], capture_output=True, text=True,
                       timeout=60, env=dict(env, GPUQUEUE_SHARED_DIR=str(blocked / "env-root")))
    assert p.returncode == 2 and f"the shared root {blocked / 'env-root'} is not usable" in p.stderr
