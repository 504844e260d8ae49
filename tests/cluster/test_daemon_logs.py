"""What the scheduler daemon's log tells an admin at its start, and about a Redis password that
is refused (cluster/daemon.py, leadership.py, observability/repeats.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers.servers import free_port, wait_until


def _scheduler(tmp_path: Path, url: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUQUEUE_", "JUPYTERHUB_"))}
    log = tmp_path / "scheduler.log"
    p = subprocess.Popen([sys.executable, "-m", "gpuqueue.cli", "scheduler", *args],
                         env=dict(env, GPUQUEUE_REDIS_URL=url), stdout=log.open("wb"), stderr=subprocess.STDOUT)
    return p, log


def test_the_start_line_names_the_config_the_metrics_and_the_redis_url(tmp_path: Path, redis_factory: Any) -> None:
    """The daemon's first lines named neither its config file nor where /metrics listens: an admin
    could not tell which file a running daemon had read. One line at start says both, and the
    Redis URL with its password masked."""
    r = redis_factory(password="s3cret-pw")
    config = tmp_path / "pools.toml"
    config.write_text('[pools.gpu]\nnodes = { "n1" = 1 }\n')
    port = free_port()
    p, log = _scheduler(tmp_path, f"redis://:s3cret-pw@127.0.0.1:{r.port}/0", "--config", str(config),
                        "--metrics-port", str(port), "--metrics-address", "127.0.0.1")
    try:
        wait_until(lambda: "leader now" in log.read_text(), 30, 0.1, "the daemon to lead")
        line = next((ln for ln in log.read_text().splitlines() if "gpuqueue scheduler starting" in ln), "")
        assert f"config {config}" in line, log.read_text()
        assert f"metrics on http://127.0.0.1:{port}/metrics" in line, line
        assert f"redis redis://:***@127.0.0.1:{r.port}/0 (from the environment)" in line, line
        assert "s3cret-pw" not in log.read_text()
    finally:
        p.kill()
        p.wait(10)


def test_a_refused_password_is_one_error_naming_the_fix_then_a_count(tmp_path: Path, redis_factory: Any) -> None:
    """A wrong Redis password logged the same warning every 1.7 s without end. It is now one
    error naming where the password is set, then only how often it came, at a growing interval."""
    r = redis_factory(password="the-right-one")
    p, log = _scheduler(tmp_path, f"redis://:a-wrong-one@127.0.0.1:{r.port}/0")
    try:  # the first count comes 10 s after the first line, the next 20 s after it
        wait_until(lambda: "the message above came" in log.read_text(), 30, 0.2, "the first count")
        text = log.read_text()
    finally:
        p.kill()
        p.wait(10)
    refused = [ln for ln in text.splitlines() if "refused this daemon's user or password" in ln]
    assert len(refused) == 1, text
    assert '"level": "error"' in refused[0] or "ERROR" in refused[0], refused[0]
    for fix in ("GPUQUEUE_REDIS_URL in /etc/gpuqueue/scheduler.env", "--redis-file",
                "password of user gpuqueue-scheduler", "redis://:***@"):
        assert fix in refused[0], refused[0]
    counts = [ln for ln in text.splitlines() if "the message above came" in ln]
    assert len(counts) == 1, text
    assert len(text.splitlines()) < 8, text
    assert "a-wrong-one" not in text
