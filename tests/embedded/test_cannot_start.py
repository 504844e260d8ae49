"""A job whose attempt cannot even start (its program is missing or not executable, its working
folder does not exist) fails at once, naming the cause and the fix, instead of spending its
retries on a cause that does not go away; a job whose own code fails is still retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.servers import wait_until


def _ended(c: Any, job_id: str) -> dict[str, Any]:
    return wait_until(lambda: (j := c.get(job_id))["state"] in ("failed", "succeeded") and j, 60, 0.2,
                      f"job {job_id} to end")


def test_a_job_that_cannot_start_fails_at_once_naming_the_cause(jupyter_server_factory, tmp_path: Path) -> None:
    cfg = tmp_path / "queue.toml"
    cfg.write_text('retries = 2\nretry_backoff = 0.2\n[pools.train]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    c = server.client()
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)  # not executable, by anyone (root included)
    missing = c.submit({"kind": "command", "gpus": 0, "command": ["/nonexistent/bin/python", "train.py"]})
    noexec = c.submit({"kind": "command", "gpus": 0, "command": [str(script)]})
    nocwd = c.submit({"kind": "command", "gpus": 0, "command": ["true"], "cwd": "/nonexistent/work"})
    own = c.submit({"kind": "command", "gpus": 0, "command": ["sh", "-c", "exit 127"]})  # its own code's failure
    expected = {
        missing["id"]: ("the job could not start on node local: /nonexistent/bin/python does not exist: fix the "
                        "path (the job's first word, or its --python), or ask your admin to install it there"),
        noexec["id"]: (f"the job could not start on node local: {script} is not executable by uid 0: make it "
                       f"executable by that user (chmod a+rx, and a+x on its folders), or ask your admin to"),
        nocwd["id"]: ("the job could not start on node local: its working folder /nonexistent/work does not exist: "
                      "create it, or submit the job with another working folder"),
    }
    for job_id, error in expected.items():
        job = _ended(c, job_id)
        assert job["state"] == "failed", job
        assert job["error"] == error, job["error"]
        assert [a["outcome"] for a in job["attempts"]] == ["cannot_start"], job["attempts"]  # no retry spent
    job = _ended(c, own["id"])
    assert job["state"] == "failed" and job["error"] == "the job process exited with code 127", job
    assert [a["outcome"] for a in job["attempts"]] == ["failed"] * 3, job["attempts"]  # retried as before
    # the job's log still shows what the runner met
    lines = [e["data"]["line"] for e in c.events(missing["id"]) if e["type"] == "log"]
    assert any(line.startswith("gpuqueue: cannot start the job: [Errno 2]") for line in lines), lines
