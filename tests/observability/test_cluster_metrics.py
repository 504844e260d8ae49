"""Scrape real cluster processes: a leader and a standby scheduler daemon and a worker, on a
redis-server of their own. Only the leader reports queue state; the worker reports its process
and (here, missing) NVML."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests

from helpers.hardware import NVML_UP
from helpers.servers import free_port, wait_until
from obstools import PROMTOOL, Scrape, promtool_check_metrics

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.terminate()
    for p in started:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _scrape(port: int) -> Scrape | None:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy starting
        return None
    return Scrape(r.text) if r.ok else None


def test_daemons_and_worker_serve_metrics(redis_factory, procs, tmp_path: Path) -> None:
    redis = redis_factory()
    cli = [sys.executable, "-m", "gpuqueue.cli"]
    ports = {"leader": free_port(), "standby": free_port(), "worker": free_port()}

    def start(name: str, *args: str) -> None:
        log = open(tmp_path / f"{name}.log", "wb")
        procs.append(subprocess.Popen([*cli, *args, "--redis", redis.url, "--metrics-port", str(ports[name])],
                                      stdout=log, stderr=subprocess.STDOUT))

    start("leader", "scheduler")
    wait_until(lambda: (s := _scrape(ports["leader"])) and s.get("gpuqueue_scheduler_leader") == 1,
               60, 0.2, "the first daemon to lead")
    start("standby", "scheduler")
    # as root, per-user identities would need a state folder others may enter: tmp_path is not
    start("worker", "worker", "--node", "n1", "--gpus", "2", "--state-dir", str(tmp_path / "w"), "--identities", "none")

    lead = wait_until(lambda: (s := _scrape(ports["leader"])) and s.get("gpuqueue_node_up", node="n1", pool="default") == 1 and s,
                      60, 0.2, "the worker's node to join")
    assert lead.get("gpuqueue_pool_gpus", pool="default") == 2
    assert lead.get("gpuqueue_queue_depth", pool="default", priority="high") == 0
    assert lead.series("gpuqueue_build_info")[0]["mode"] == "cluster"
    standby = wait_until(lambda: _scrape(ports["standby"]), 60, 0.2, "the standby's /metrics")
    assert standby.get("gpuqueue_scheduler_leader") == 0
    assert not standby.series("gpuqueue_pool_gpus")  # the leader alone reports the queue
    worker = wait_until(lambda: _scrape(ports["worker"]), 60, 0.2, "the worker's /metrics")
    assert worker.get("gpuqueue_process_info", component="worker", node="n1",
                      version=worker.series("gpuqueue_process_info")[0]["version"]) == 1
    assert worker.get("gpuqueue_nvml_up") == (1 if NVML_UP else 0)  # NVML as it is here
    assert worker.types.get("process_cpu_seconds") == "counter"
    if PROMTOOL:
        for s in (lead, standby, worker):
            lint = promtool_check_metrics(s.text)
            assert lint.returncode == 0, lint.stdout + lint.stderr
