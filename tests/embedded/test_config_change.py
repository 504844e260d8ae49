"""The embedded queue restarted with a config under which a queued job can never run (its pool
is gone, or too small for it now): the job fails, saying why, instead of waiting for ever."""

from __future__ import annotations

import sys

import pytest

from helpers.servers import wait_until


@pytest.mark.parametrize("policy", ["gpuqueue", "fifo"])  # FIFO queued it again for ever
def test_a_queued_job_whose_pool_left_the_config_fails_saying_why(jupyter_server_factory, tmp_path, policy) -> None:
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[pools.train]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)}, args=[f"--GPUQueueApp.policy={policy}"])
    c = server.client()
    try:
        sleep = [sys.executable, "-c", "import time; time.sleep(2)"]
        first = c.submit({"kind": "command", "gpus": 1, "pool": "train", "command": sleep})
        waiting = c.submit({"kind": "command", "gpus": 1, "pool": "train", "command": ["true"]})
        assert c.get(waiting["id"])["state"] == "queued"
        server.stop()
        cfg.write_text('[pools.dev]\nnodes = { local = 1 }\n')  # the admin renamed the pool
        server.start()
        c = server.client()
        job = wait_until(lambda: (j := c.get(waiting["id"]))["state"] == "failed" and j, 30, 0.2, "the job to fail")
        assert job["error"] == ("cannot be queued with the queue's config: unknown pool 'train': the pools are dev; "
                                "submit it again"), job["error"]
        # a new job in the pool there is runs
        again = c.submit({"kind": "command", "gpus": 1, "pool": "dev", "command": ["true"]})
        wait_until(lambda: c.get(again["id"])["state"] == "succeeded", 60, 0.2, "the new job to run")
        # the job that was running there when the server stopped still ends as it ran
        wait_until(lambda: c.get(first["id"])["state"] == "succeeded", 60, 0.2, "the running job to end")
    finally:
        server.kill_jobs()


def test_a_queued_job_too_big_for_its_shrunk_pool_fails_saying_why(jupyter_server_factory, tmp_path) -> None:
    """The admin gave the pool fewer GPUs (and a shorter maximum run): a queued job that no longer
    fits waited for ever ('waiting for GPUs'); the one that still fits runs. The job that ran on
    the GPUs that are gone ends as it ran (settling it stopped the queue from starting)."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[pools.train]\nnodes = { local = 2 }\nmax_runtime = "2h"\n')
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg)})
    c = server.client()
    try:
        sleep = [sys.executable, "-c", "import time; time.sleep(2)"]
        first = c.submit({"kind": "command", "gpus": 2, "command": sleep})
        big = c.submit({"kind": "command", "gpus": 2, "command": ["true"]})
        long = c.submit({"kind": "command", "gpus": 1, "timeout_s": 5400, "command": ["true"]})
        small = c.submit({"kind": "command", "gpus": 1, "command": ["true"]})
        assert {c.get(j["id"])["state"] for j in (big, long, small)} == {"queued"}
        server.stop()
        cfg.write_text('[pools.train]\nnodes = { local = 1 }\nmax_runtime = "1h"\n')
        server.start()
        c = server.client()
        for job, why in ((big, "2 GPUs do not fit on one node of pool 'train' (its largest node has 1); ask for at most 1"),
                         (long, "time limit 1h30m is over pool 'train''s maximum of 1h00m: ask for less, or use another "
                                "pool (train)")):
            j = wait_until(lambda: (j := c.get(job["id"]))["state"] == "failed" and j, 30, 0.2, "the job to fail")
            assert j["error"] == f"cannot be queued with the queue's config: {why}; submit it again", j["error"]
        wait_until(lambda: c.get(small["id"])["state"] == "succeeded", 60, 0.2, "the job that still fits to run")
        assert c.get(first["id"])["state"] == "succeeded"
        assert "Traceback" not in server.log_path.read_text()
    finally:
        server.kill_jobs()
