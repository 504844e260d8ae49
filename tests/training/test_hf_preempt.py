"""A plain HF Trainer script under the real embedded queue: live metrics, checkpoints through
the job's manager, admin preemption mid-training, automatic resume, same final weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from training.jobs import SCRIPTS, by_attempt, logs, submit_script, wait_done, wait_metric_step


def test_preempted_hf_job_resumes_from_its_checkpoint_and_ends_with_the_same_weights(
    jupyter_server, tmp_path: Path
) -> None:
    # the reference: the same script, uninterrupted, outside the queue
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(SCRIPTS / "hf_train.py"), str(ref)], check=True,
                   capture_output=True, cwd=tmp_path)
    server = jupyter_server
    out = tmp_path / "queued"
    job = submit_script(server, "hf_train.py", [str(out)], env={"STEP_SLEEP": "0.12"}, cwd=str(tmp_path))
    running = wait_metric_step(server, job, 14)
    # metrics stream while the job runs: loss and learning rate, per step
    assert server.client().get(job)["state"] == "running"
    m = [e["data"] for e in running if e["type"] == "metrics" and "loss" in e["data"]]
    assert m and {"loss", "lr"} <= set(m[0]) and m[0]["step"] == 1
    assert any(e["type"] == "progress" and e["data"]["total"] == 40 for e in running)
    server.client().preempt(job)
    rec = wait_done(server, job)
    evs = server.client().events(job)
    assert rec["state"] == "succeeded", logs(evs)[-3000:]
    assert [a["outcome"] for a in rec["attempts"]] == ["preempted", "succeeded"]
    first, second = by_attempt(evs)
    saved = [e["data"] for e in first if e["type"] == "checkpoint"]
    # the scheduled save at step 10 and the save on the notice, past step 14
    assert saved[0]["step"] == 10 and saved[-1]["step"] >= 14, saved
    notice_step = saved[-1]["step"]
    assert "stopped at step" in logs(first)
    resumed = [e["data"] for e in second if e["type"] == "info" and "resumed_step" in e["data"]]
    assert [r["resumed_step"] for r in resumed] == [notice_step]  # never from zero
    steps2 = [e["data"]["step"] for e in second if e["type"] == "metrics" and "loss" in e["data"]]
    assert min(steps2) == notice_step + 1 and max(steps2) == 40
    # the checkpoint folder on disk holds only complete checkpoints, at most save_total_limit + best
    ckdir = Path(saved[-1]["path"]).parent
    names = sorted(p.name for p in ckdir.iterdir())
    assert all((ckdir / n / "COMPLETE").exists() for n in names) and len(names) <= 3, names
    assert "step-000000040" in names
    best = [e["data"] for e in evs if e["type"] == "checkpoint" and e["data"]["best"]]
    assert best and all("eval_loss" in b["metrics"] for b in best)
    # the same weights as the uninterrupted run
    a = torch.load(ref / "final.pt")
    b = torch.load(out / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
