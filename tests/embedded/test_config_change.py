"""The embedded queue restarted with a config that no longer has a queued job's pool: the job
fails, saying why, instead of waiting for ever."""

from __future__ import annotations

import sys

from helpers.servers import wait_until


def test_a_queued_job_whose_pool_left_the_config_fails_saying_why(jupyter_server_factory, tmp_path) -> None:
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[pools.train]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
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
