"""GPUQueueApp.policy in the embedded mode: FIFO never turns a configured quota off."""

from __future__ import annotations


def test_fifo_over_a_config_with_quotas_runs_fair_share_and_says_why(jupyter_server_factory, tmp_path) -> None:
    cfg = tmp_path / "queue.toml"
    cfg.write_text('[defaults]\nmax_gpus = 1\n[pools.default]\nnodes = { local = 2 }\n')
    server = jupyter_server_factory(gpus=2, env={"GPUQUEUE_CONFIG": str(cfg)}, args=["--GPUQueueApp.policy=fifo"])
    r = server.api("POST", "gpuqueue/api/jobs", json={"spec": {"kind": "command", "gpus": 2, "command": ["true"]}})
    assert r.status_code == 400
    assert r.json()["message"] == "2 GPUs is over your quota of 1 GPU; ask for at most 1"
    log = server.log_path.read_text()
    assert ("GPUQueueApp.policy: policy 'fifo' does not enforce [defaults] max_gpus: use policy 'gpuqueue' "
            "(the default), or remove these limits from the config; the fair-share policy runs instead, "
            "which does") in log
    assert "Traceback" not in log

