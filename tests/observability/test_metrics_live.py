"""Scrape a real ``jupyter server`` running the embedded queue while real jobs run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import requests

from helpers.hardware import NVML_UP
from helpers.servers import JupyterServer, wait_until
from obstools import PROMTOOL, Scrape, promtool_check_metrics, scrape_server

EXPECTED_TYPES = {
    "gpuqueue_build_info": "gauge",
    "gpuqueue_jobs_submitted": "counter",
    "gpuqueue_job_starts": "counter",
    "gpuqueue_jobs_finished": "counter",
    "gpuqueue_job_attempts_ended": "counter",
    "gpuqueue_preemptions": "counter",
    "gpuqueue_job_retries": "counter",
    "gpuqueue_queue_wait_seconds": "histogram",
    "gpuqueue_scheduler_pass_duration_seconds": "histogram",
    "gpuqueue_scheduler_last_pass_timestamp_seconds": "gauge",
    "gpuqueue_scheduler_leader": "gauge",
    "gpuqueue_api_request_duration_seconds": "histogram",
    "gpuqueue_pool_gpus": "gauge",
    "gpuqueue_pool_gpus_allocated": "gauge",
    "gpuqueue_pool_gpus_idle_while_work_waits": "gauge",
    "gpuqueue_pool_jobs_running": "gauge",
    "gpuqueue_queue_depth": "gauge",
    "gpuqueue_queue_backoff_jobs": "gauge",
    "gpuqueue_queue_oldest_wait_seconds": "gauge",
    "gpuqueue_user_usage_gpu_seconds": "gauge",
    "gpuqueue_node_up": "gauge",
    "gpuqueue_job_training_metric": "gauge",
    "gpuqueue_job_training_step": "gauge",
    "gpuqueue_job_progress_ratio": "gauge",
    "gpuqueue_job_gpu_info": "gauge",
    "gpuqueue_job_metrics_dropped": "counter",
    "gpuqueue_nvml_up": "gauge",
}

# A job that reports training metrics and progress, then holds its GPU until a file appears,
# and exits with the given code (143 on SIGTERM, as a preempted job does).
JOB = r"""
import os, signal, sys, time
from gpuqueue.job.channel import emit
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))
emit("metrics", {"step": 5, "t": time.time(), "loss": 0.5, "accuracy": 0.9})
emit("progress", {"done": 5, "total": 10})
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
sys.exit(int(sys.argv[2]))
"""


def job(release: Path, code: int, **spec):
    return {"kind": "command", "command": [sys.executable, "-c", JOB, str(release), str(code)], "gpus": 1, **spec}


def test_scrape_needs_the_token_and_passes_promtool(jupyter_server: JupyterServer) -> None:
    r = requests.get(jupyter_server.url + "gpuqueue/metrics", timeout=10)
    assert r.status_code == 403
    assert "token" in r.text
    r = requests.get(jupyter_server.url + "gpuqueue/metrics", headers={"Authorization": "token wrong"}, timeout=10)
    assert r.status_code == 403
    # Prometheus' `authorization: {type: Bearer}` works too
    before = jupyter_server.api("GET", "api/status").json()["last_activity"]
    r = requests.get(jupyter_server.url + "gpuqueue/metrics",
                     headers={"Authorization": f"Bearer {jupyter_server.token}"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    # a scrape is not user activity (docs/metrics.md): the server's last_activity, which an idle
    # culler reads, is as it was; an authenticated REST call moves it
    assert jupyter_server.api("GET", "api/status").json()["last_activity"] == before
    assert jupyter_server.api("GET", "gpuqueue/api/jobs").status_code == 200
    assert jupyter_server.api("GET", "api/status").json()["last_activity"] > before
    # promtool lints the Prometheus text format; it does not read OpenMetrics, which the
    # endpoint serves when asked (checked with prometheus_client's parser instead)
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    jupyter_server.client().submit({"kind": "command", "command": [sys.executable, "-c", "pass"], "gpus": 1})
    if PROMTOOL:
        lint = promtool_check_metrics(scrape_server(jupyter_server).text)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    om = scrape_server(jupyter_server, accept="application/openmetrics-text; version=1.0.0")
    assert om.text.rstrip().endswith("# EOF")
    families = {f.name: f.type for f in om_parse(om.text)}
    assert families["gpuqueue_jobs_submitted"] == "counter"
    assert families["gpuqueue_queue_wait_seconds"] == "histogram"


def test_public_scrape_when_configured(jupyter_server_factory) -> None:
    server = jupyter_server_factory(gpus=1, env={"GPUQUEUE_METRICS_PUBLIC": "1"})
    r = requests.get(server.url + "gpuqueue/metrics", timeout=10)
    assert r.status_code == 200
    assert Scrape(r.text).get("gpuqueue_pool_gpus", pool="default") == 1


def test_metrics_follow_real_jobs(jupyter_server: JupyterServer, tmp_path: Path) -> None:
    server, client = jupyter_server, jupyter_server.client()
    first = scrape_server(server)
    for name, kind in EXPECTED_TYPES.items():
        if name.startswith("gpuqueue_job_") and kind == "gauge" or name == "gpuqueue_user_usage_gpu_seconds":
            continue  # per-job and per-user series appear with jobs and users
        assert first.types.get(name) == kind, f"{name}: {first.types.get(name)} != {kind}"
    assert first.get("gpuqueue_pool_gpus", pool="default") == 2
    assert first.get("gpuqueue_pool_gpus_allocated", pool="default") == 0
    # NVML as it is on this machine: no driver is reported (0), never a crash
    assert first.get("gpuqueue_nvml_up") == (1 if NVML_UP else 0)
    assert first.get("gpuqueue_scheduler_leader") == 1
    assert first.get("gpuqueue_jobs_finished_total", pool="default", outcome="succeeded") == 0
    assert first.get("gpuqueue_node_up", node="local", pool="default") == 1

    rel_a, rel_b = tmp_path / "release-a", tmp_path / "release-b"
    a = client.submit(job(rel_a, 0, name="a"))["id"]
    b = client.submit(job(rel_b, 1, name="b", retries=0))["id"]

    def busy() -> Scrape | None:
        s = scrape_server(server)
        ok = (s.get("gpuqueue_pool_gpus_allocated", pool="default") == 2
              and s.get("gpuqueue_job_training_metric", job_id=a, user=owner, pool="default", name="loss") == 0.5
              and s.get("gpuqueue_job_progress_ratio", job_id=a, user=owner, pool="default") == 0.5
            # and both jobs' GPU series (one CI run at load scraped both GPUs allocated, B's series not yet there)
            and {x["job_id"] for x in s.series("gpuqueue_job_gpu_info")} == {a, b})
        return s if ok else None

    owner = client.get(a)["owner"]
    s = wait_until(busy, 60, 0.2, "both jobs running and A's metrics scraped")
    c = client.submit({"kind": "command", "command": [sys.executable, "-c", "import time; time.sleep(0.3)"],
                       "gpus": 1, "priority": "high", "name": "c"})["id"]
    s = wait_until(lambda: (x := scrape_server(server)).get(
        "gpuqueue_queue_depth", pool="default", priority="high") == 1 and x, 30, 0.2, "C queued")
    assert s.get("gpuqueue_job_training_metric", job_id=a, user=owner, pool="default", name="accuracy") == 0.9
    assert s.get("gpuqueue_job_training_step", job_id=a, user=owner, pool="default") == 5
    assert {x["job_id"] for x in s.series("gpuqueue_job_gpu_info")} == {a, b}
    assert sorted(x["gpu"] for x in s.series("gpuqueue_job_gpu_info")) == ["0", "1"]
    assert s.get("gpuqueue_pool_jobs_running", pool="default") == 2
    assert s.get("gpuqueue_pool_gpus_idle_while_work_waits", pool="default") == 0
    assert s.get("gpuqueue_queue_oldest_wait_seconds", pool="default", priority="high") >= 0
    assert s.get("gpuqueue_queue_depth", pool="default", priority="medium") == 0
    assert s.get("gpuqueue_jobs_submitted_total", pool="default", priority="medium") == 2
    assert s.get("gpuqueue_jobs_submitted_total", pool="default", priority="high") == 1
    assert s.get("gpuqueue_job_starts_total", pool="default", priority="medium") == 2
    assert s.sum("gpuqueue_queue_wait_seconds_count", pool="default", priority="medium") == 2
    assert s.get("gpuqueue_user_usage_gpu_seconds", user=owner) > 0
    if PROMTOOL:  # lint the live output while busy (CI installs promtool)
        lint = promtool_check_metrics(s.text)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    # preempt B by hand (the server's own user is an admin): C (high) takes its GPU, B waits
    client.preempt(b)
    wait_until(lambda: client.get(c)["state"] == "succeeded", 60, 0.2, "C to run and succeed")
    wait_until(lambda: client.get(b)["state"] == "running" and len(client.get(b)["attempts"]) == 2,
               60, 0.2, "B to run again after its preemption")
    rel_a.touch()
    rel_b.touch()
    wait_until(lambda: client.get(a)["state"] == "succeeded" and client.get(b)["state"] == "failed",
               60, 0.2, "A to succeed and B to fail")

    def settled() -> Scrape | None:
        x = scrape_server(server)
        return x if x.get("gpuqueue_pool_gpus_allocated", pool="default") == 0 else None

    end = wait_until(settled, 30, 0.2, "the GPUs to be free")
    assert end.get("gpuqueue_jobs_finished_total", pool="default", outcome="succeeded") == 2
    assert end.get("gpuqueue_jobs_finished_total", pool="default", outcome="failed") == 1
    assert end.get("gpuqueue_preemptions_total", pool="default") == 1
    assert end.get("gpuqueue_job_retries_total", pool="default", cause="preempted") == 1
    assert end.get("gpuqueue_job_attempts_ended_total", pool="default", outcome="preempted") == 1
    assert end.get("gpuqueue_job_attempts_ended_total", pool="default", outcome="failed") == 1
    assert end.get("gpuqueue_job_starts_total", pool="default", priority="medium") == 3
    assert end.get("gpuqueue_job_starts_total", pool="default", priority="high") == 1
    waits = end.sum("gpuqueue_queue_wait_seconds_count", pool="default")
    assert waits == 4, waits  # A, B, C, and B's second attempt
    # C waited for a GPU for as long as B took to stop: more than nothing
    assert end.get("gpuqueue_queue_wait_seconds_sum", pool="default", priority="high") > 0
    assert end.sum("gpuqueue_queue_depth", pool="default") == 0
    assert end.series("gpuqueue_job_training_metric") == []  # series go with the job
    assert end.series("gpuqueue_job_gpu_info") == []
    assert end.get("gpuqueue_scheduler_pass_duration_seconds_count") > first.get(
        "gpuqueue_scheduler_pass_duration_seconds_count")
    assert time.time() - end.get("gpuqueue_scheduler_last_pass_timestamp_seconds") < 10
    api = "gpuqueue_api_request_duration_seconds_count"
    assert end.get(api, handler="JobsHandler", method="POST", code="201") == 3
    assert end.get(api, handler="PreemptHandler", method="POST", code="200") == 1
    assert end.sum(api, handler="JobHandler", method="GET") >= 1
    if PROMTOOL:
        lint = promtool_check_metrics(end.text)
        assert lint.returncode == 0, lint.stdout + lint.stderr
