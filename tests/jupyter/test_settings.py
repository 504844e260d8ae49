"""A GPUQueueApp setting the server cannot use turns the queue off, loudly, instead of running
something else: the server starts, its log says once what to fix (no traceback), and every
request to the queue answers 503 with that message."""

from __future__ import annotations

import os
import subprocess
import sys

OFF = ". The queue is off until this is fixed (in jupyter_server_config.py or on the server's command line) and the server restarted"


def _off(server, message: str) -> None:
    """Every verb, and the metrics scrape, answer 503 with ``message``; the log has it once."""
    for method, path in (("GET", "gpuqueue/api/queue"), ("GET", "gpuqueue/api/jobs"), ("POST", "gpuqueue/api/jobs")):
        r = server.api(method, path, json={"spec": {"kind": "command", "command": ["true"]}})
        assert r.status_code == 503, (path, r.status_code, r.text)
        assert r.json()["message"] == message, r.json()["message"]
    assert server.api("GET", "gpuqueue/metrics").status_code == 503
    log = server.log_path.read_text()
    assert log.count("gpuqueue: " + message) == 1, log  # the error at start (each 503 has its info line too)
    assert "Traceback" not in log and "error linking extension" not in log


def test_a_bad_value_does_not_drop_the_cluster_url(jupyter_server_factory) -> None:
    # traitlets stops at the first bad value and drops the settings after it: here api_url, which
    # would have made this hub user's server run jobs itself, on no GPUs, with no word of it
    server = jupyter_server_factory(
        gpus=0, ready="api/status", args=["--GPUQueueApp.policy=fair", "--GPUQueueApp.api_url=http://127.0.0.1:9/"])
    _off(server, "GPUQueueApp.policy cannot be used: The 'policy' trait of a GPUQueueApp instance expected any of "
                 "['gpuqueue', 'fifo'], not the str 'fair'" + OFF)

    # what a user sees in a terminal and in a notebook: the same message, not a traceback
    cli = subprocess.run([sys.executable, "-m", "gpuqueue.cli", "ls"], capture_output=True, text=True,
                         env=dict(os.environ, GPUQUEUE_URL=server.url, GPUQUEUE_TOKEN=server.token))
    assert cli.returncode == 1 and "GPUQueueApp.policy cannot be used" in cli.stderr and "Traceback" not in cli.stderr
    k = server.start_kernel()
    assert k.run("%load_ext jupyter_gpuqueue").error is None
    res = k.run("%%train --gpus 1\nx = 1", timeout=60)
    assert "GPUQueueApp.policy cannot be used" in res.text + str(res.error), (res.text, res.error)
    assert "Traceback" not in res.text


def test_unknown_settings_and_bad_types_are_named_with_the_fix(jupyter_server_factory) -> None:
    server = jupyter_server_factory(
        gpus=0, ready="api/status", args=["--GPUQueueApp.api_ur=http://127.0.0.1:9/", "--GPUQueueApp.identity=usr",
                                          "--GPUQueueApp.max_payload_mb=0"])  # out of range (config.md)
    _off(server, "GPUQueueApp.api_ur is not a gpuqueue setting (did you mean api_url?); docs/config.md lists the "
                 "GPUQueueApp settings; GPUQueueApp.identity cannot be used: The 'identity' trait of a GPUQueueApp "
                 "instance expected any of ['auto', 'user', 'server_owner'], not the str 'usr'; "
                 "GPUQueueApp.max_payload_mb cannot be used: The value of the 'max_payload_mb' trait of a GPUQueueApp "
                 "instance should not be less than 0.001, but a value of 0.0 was specified" + OFF)


def test_a_missing_queue_file_turns_the_queue_off(jupyter_server_factory, tmp_path) -> None:
    missing = tmp_path / "queue.toml"
    server = jupyter_server_factory(gpus=2, ready="api/status", env={"GPUQUEUE_CONFIG": str(missing)})
    _off(server, f"config file {missing} does not exist. The queue is off until the file is fixed (docs/config.md) "
                 "and the server restarted")


def test_good_settings_still_load(jupyter_server_factory) -> None:
    server = jupyter_server_factory(gpus=2, args=["--GPUQueueApp.identity=server_owner", "--GPUQueueApp.stop_grace_s=3"])
    assert server.api("GET", "gpuqueue/api/queue").status_code == 200
    assert "is not a gpuqueue setting" not in server.log_path.read_text()


def test_counts_that_are_not_counts(jupyter_server_factory) -> None:
    server = jupyter_server_factory(gpus=0, ready="api/status", env={"GPUQUEUE_GPUS": "two"})
    _off(server, "GPUQUEUE_GPUS='two' is not a whole number, e.g. GPUQUEUE_GPUS=4. The queue is off until this is "
                 "fixed and the server restarted")
    server = jupyter_server_factory(gpus=0, name="negative", ready="api/status", args=["--GPUQueueApp.gpus=-2"])
    _off(server, "GPUQueueApp.gpus cannot be used: The value of the 'gpus' trait of a GPUQueueApp instance should "
                 "not be less than 0, but a value of -2 was specified" + OFF)


def test_a_state_folder_it_cannot_use(jupyter_server_factory, tmp_path) -> None:
    (tmp_path / "afile").write_text("")
    bad = tmp_path / "afile" / "queue"
    server = jupyter_server_factory(gpus=2, ready="api/status", env={"GPUQUEUE_STATE_DIR": str(bad)})
    _off(server, f"the queue cannot start in {bad}: Not a directory: '{bad}'. The queue is off until this is fixed "
                 "(GPUQueueApp.state_dir, $GPUQUEUE_STATE_DIR) and the server restarted")

    # two servers on one state folder: the second says whose it is, and the first goes on
    first = jupyter_server_factory(gpus=2, name="first")
    second = jupyter_server_factory(gpus=2, name="second", ready="api/status",
                                    env={"GPUQUEUE_STATE_DIR": str(first.state_dir)})
    _off(second, f"the queue cannot start in {first.state_dir}: another Jupyter server already runs the queue in "
                 f"{first.state_dir}; stop it, or give this one its own GPUQUEUE_STATE_DIR. The queue is off until "
                 "this is fixed (GPUQueueApp.state_dir, $GPUQUEUE_STATE_DIR) and the server restarted")
    assert first.api("GET", "gpuqueue/api/queue").status_code == 200


def test_a_hub_user_server_without_the_api_url_warns_that_it_runs_jobs_itself(jupyter_server_factory) -> None:
    # what a hub config that replaced c.Spawner.environment leaves: the server runs its own queue
    server = jupyter_server_factory(gpus=0, env={"JUPYTERHUB_API_TOKEN": "hub-token-0123456789"})
    assert server.api("GET", "gpuqueue/api/queue").status_code == 200
    log = server.log_path.read_text()
    assert ('"level": "warning"' in log and "this JupyterHub user server runs an embedded queue of its own: its jobs "
            "run here, on this server's machine, not on the cluster; for the cluster, set GPUQUEUE_API_URL in the "
            "hub's c.Spawner.environment (docs/deploy.md, JupyterHub)" in log), log
    assert "hub-token-0123456789" not in log
    plain = jupyter_server_factory(gpus=0, name="laptop")
    assert "embedded queue of its own" not in plain.log_path.read_text()


def test_a_log_format_it_does_not_know(jupyter_server_factory) -> None:
    server = jupyter_server_factory(gpus=0, ready="api/status", env={"GPUQUEUE_LOG_FORMAT": "xml"})
    _off(server, "log format 'xml' is not one of: json, human, auto (GPUQueueApp.log_format, $GPUQUEUE_LOG_FORMAT, "
                 "$GPUQUEUE_LOG_LEVEL). The queue is off until this is fixed and the server restarted")


def test_a_misspelt_warm_import_is_named(jupyter_server_factory, tmp_path) -> None:
    """A module of warm_imports that is not installed is skipped: a typo made every cell job start
    cold, and nothing said so. The server's log names it once; modules that are there are not."""
    cfg = tmp_path / "queue.toml"
    cfg.write_text('warm_imports = ["json", "transfomers"]\n[pools.default]\nnodes = { local = 1 }\n')
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_CONFIG": str(cfg)})
    log = server.log_path.read_text()
    assert log.count(f"warm_imports: 'transfomers' not installed for {sys.executable}: cell jobs are started "
                     "without it; fix the name in the queue config, or install it") == 1, log
    assert "'json'" not in log
