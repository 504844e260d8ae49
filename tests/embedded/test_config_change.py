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
        assert "Traceback" not in server.log_path.read_text()  # its GPUs left the config (an AssertionError each pass)
    finally:
        server.kill_jobs()


def test_a_queued_job_the_shrunk_pool_can_never_run_fails_saying_why(jupyter_server_factory, tmp_path) -> None:
    """The admin shrank the pool (fewer GPUs, a per-user cap, a shorter maximum run): the queued
    jobs that can never run under the new config waited for ever ('waiting for GPUs'); they fail
    at the restart, naming the numbers and the fix. One that still fits runs, and limits that
    change with time (queue depth) hold no job back at the restart."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[pools.train]\nnodes = { local = 4 }\nmax_runtime = "2h"\n')
    server = jupyter_server_factory(gpus=4, env={"GPUQUEUE_CONFIG": str(cfg)})
    c = server.client()
    try:
        sleep = [sys.executable, "-c", "import time; time.sleep(3)"]
        first = c.submit({"kind": "command", "gpus": 4, "command": sleep})
        wait_until(lambda: c.get(first["id"])["state"] == "running", 30, 0.1, "the first job to run")
        big = c.submit({"kind": "command", "gpus": 4, "command": ["true"]})
        capped = c.submit({"kind": "command", "gpus": 2, "command": ["true"]})
        long = c.submit({"kind": "command", "gpus": 1, "timeout_s": 5400, "command": ["true"]})
        small = [c.submit({"kind": "command", "gpus": 1, "command": ["true"]}) for _ in range(2)]
        assert {c.get(j["id"])["state"] for j in (big, capped, long, *small)} == {"queued"}
        server.stop()
        cfg.write_text('[pools.train]\nnodes = { local = 3 }\nmax_runtime = "1h"\nmax_gpus_per_user = 1\n'
                       'max_queued = 1\n')
        server.start()
        c = server.client()
        for job, why in ((big, "4 GPUs do not fit on one node of pool 'train' (its largest node has 3); ask for at most 3"),
                         (capped, "2 GPUs is over pool 'train''s per-user limit of 1; ask for at most 1"),
                         (long, "time limit 1h30m is over pool 'train''s maximum of 1h00m: ask for less, or use another "
                                "pool (train)")):
            j = wait_until(lambda: (j := c.get(job["id"]))["state"] == "failed" and j, 30, 0.2, "the job to fail")
            assert j["error"] == f"cannot be queued with the queue's config: {why}; submit it again", j["error"]
            assert j["attempts"] == [], j["attempts"]
        for job in small:  # two queued, over max_queued = 1: kept, and run
            wait_until(lambda: c.get(job["id"])["state"] == "succeeded", 60, 0.2, "a job that still fits to run")
        wait_until(lambda: c.get(first["id"])["state"] == "succeeded", 60, 0.2, "the running job to end")
    finally:
        server.kill_jobs()


def test_a_running_job_the_new_config_cannot_run_again_fails_instead_of_a_retry(jupyter_server_factory,
                                                                                 tmp_path) -> None:
    """A job that was running when the admin lowered the pool's per-user cap below it, and then
    failed with a retry left, waited for ever for the retry ('quota'); it fails, saying why."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text('retry_backoff = 0.2\n[pools.train]\nnodes = { local = 2 }\n')
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg)})
    c = server.client()
    try:
        fails = [sys.executable, "-c", "import time, sys; time.sleep(6); sys.exit(1)"]
        job = c.submit({"kind": "command", "gpus": 2, "retries": 1, "command": fails})
        wait_until(lambda: c.get(job["id"])["state"] == "running", 30, 0.1, "the job to run")
        server.stop()
        cfg.write_text('retry_backoff = 0.2\n[pools.train]\nnodes = { local = 2 }\nmax_gpus_per_user = 1\n')
        server.start()
        c = server.client()
        j = wait_until(lambda: (j := c.get(job["id"]))["state"] in ("failed", "succeeded") and j, 30, 0.2,
                       "the job to end")
        assert j["error"] == ("cannot be queued again with the queue's config: 2 GPUs is over pool 'train''s per-user "
                              "limit of 1; ask for at most 1; submit it again (attempt 1: the job process exited with "
                              "code 1)"), j["error"]
        assert [a["outcome"] for a in j["attempts"]] == ["failed"]
    finally:
        server.kill_jobs()
