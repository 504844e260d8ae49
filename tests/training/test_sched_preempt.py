"""Preemption initiated by the scheduler itself (not an admin's ``gpuqueue preempt``), end to end
in embedded mode: a high-priority job needs the GPU that a preemptible HF Trainer job holds; the
victim gets its grace notice, saves, exits, is requeued without counting a failure, and resumes
from the checkpoint it saved once the GPU is free, ending with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.jobs import SCRIPTS, by_attempt, logs, submit_script, wait_done, wait_metric_step

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CONFIG = """
[policy]
min_runtime = 0
grace = 30

[pools.default]
nodes = { "local" = 1 }
"""


def test_scheduler_preempts_a_job_for_a_high_priority_one_and_it_resumes(jupyter_server_factory, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(SCRIPTS / "hf_train.py"), str(ref)], check=True, capture_output=True,
                   cwd=tmp_path, env=dict(os.environ, GPUQUEUE_HF_HOOK="0"))
    cfg = tmp_path / "pools.toml"
    cfg.write_text(CONFIG)
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    out = tmp_path / "queued"
    victim = submit_script(server, "hf_train.py", [str(out)], gpus=1, env={"STEP_SLEEP": "0.12"},
                           cwd=str(tmp_path), priority="low", preemptible=True)
    wait_metric_step(server, victim, 12)
    high = submit_script(server, "hf_train.py", [str(tmp_path / "high"), "5"], gpus=1, cwd=str(tmp_path),
                         priority="high")
    rec = wait_done(server, victim)
    evs = server.client().events(victim)
    assert rec["state"] == "succeeded", logs(evs)[-3000:]
    assert [a["outcome"] for a in rec["attempts"]] == ["preempted", "succeeded"]
    assert rec["failures"] == 0 and rec["preemptions"] == 1
    hrec = server.client().get(high)
    assert hrec["state"] == "succeeded"
    # the high job started after the victim's first attempt ended, before its second began
    first_end = rec["attempts"][0]["ended_at"]
    assert first_end <= hrec["attempts"][0]["started_at"] <= rec["attempts"][1]["started_at"]
    first, second = by_attempt(evs)
    assert "stopped at step" in logs(first)
    saved = [e["data"]["step"] for e in first if e["type"] == "checkpoint"]
    assert saved[-1] >= 12, saved
    resumed = [e["data"]["resumed_step"] for e in second if e["type"] == "info" and "resumed_step" in e["data"]]
    assert resumed == [saved[-1]]
    a, b = torch.load(ref / "final.pt"), torch.load(out / "final.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
