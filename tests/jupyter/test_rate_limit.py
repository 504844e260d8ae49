"""Per-user submit rate limits in the embedded mode: the same bucket, in the server's memory;
%%train says when the next submit is accepted."""

from __future__ import annotations

import time


def test_embedded_submit_rate_and_the_magic_message(jupyter_server_factory, tmp_path) -> None:
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[defaults]\nsubmit_rate = "20/min"\nsubmit_burst = 2\n[pools.default]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    body = {"spec": {"kind": "command", "gpus": 0, "command": ["true"]}}
    too_big = {"spec": {"kind": "command", "gpus": 5, "command": ["true"]}}
    cell = {"spec": {"kind": "command", "gpus": 0, "command": ["sleep", "30"], "notebook": "a.ipynb",
                     "cell_id": "c1", "source_hash": "h1"}}

    def post(b: dict) -> int:
        return server.api("POST", "gpuqueue/api/jobs", json=b).status_code

    # a refused request and a cell that joins its own live job take no token: the burst of 2
    # is the first cell and one more job
    assert [post(too_big), post(cell), post(cell), post(body)] == [400, 201, 200, 201]
    r = server.api("POST", "gpuqueue/api/jobs", json=body)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3", (r.status_code, r.headers, r.text)
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    res = k.run("%%train --gpus 0\nx = 1")
    assert "the job was not queued: you are submitting faster than your limit of 20/min (bursts of 2): " \
           "try again in " in res.text, res.text
    time.sleep(3.1)
    res = k.run("%%train --gpus 0\nx = 41 + 1")
    assert res.error is None, res.text
    assert k.run("print(x)").stdout.strip() == "42"


def test_a_result_over_max_results_mb_is_said_in_the_cell(jupyter_server_factory, tmp_path) -> None:
    """A result larger than its owner's whole allowance for stored results is not kept: the
    %%train cell says so in the queue's words (the knob), with no traceback; the next cell's
    results come back as ever, and an older one dropped for newer ones says so too."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[defaults]\nmax_results_mb = 1\n[pools.default]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    res = k.run("%%train --gpus 0\nbig = b'r' * 1_500_000")
    assert "succeeded, but its results cannot come back" in res.text and "max_results_mb" in res.text, res.text
    assert "Traceback" not in res.text, res.text
    for n in (1, 2):
        res = k.run(f"%%train --gpus 0\nsmall = b's' * 600_000 + b'{n}'")
        assert res.error is None, res.text
    assert k.run("print(small[-1:])").stdout.strip() == "b'2'"
    first = server.api("GET", "gpuqueue/api/jobs").json()["jobs"][-2]["id"]  # newest first: the first small one
    res = k.run(f"%gpuqueue result {first}")
    # the words docs/config.md quotes (scripts/gen_config_docs.py writes them from gpuqueue.queue.bounds)
    assert f"UsageError: {first} succeeded, but its results cannot come back: job {first}: its results (" in res.text
    assert ("were dropped to make room for newer ones: your stored results are kept within 1 MB (max_results_mb in "
            "the queue config), newest first;") in res.text and "`gpuqueue rm JOB_ID`" in res.text, res.text
