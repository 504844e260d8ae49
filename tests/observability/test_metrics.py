"""The metrics engine without HTTP: scrape-time scheduler gauges over the real policies, the
event listener, per-job cardinality limits, and scrapes racing the scheduler from a thread."""

from __future__ import annotations

import threading
import time
import types

from prometheus_client import generate_latest

from gpuqueue.queue.config import PoolConfig, QueueConfig
from gpuqueue.observability.metrics import QueueMetrics, queue_wait_seconds, tornado_log_function
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec
from gpuqueue.scheduler import make_scheduler
from gpuqueue.scheduler.base import JobRequest, Start
from gpuqueue.queue.states import Outcome, Priority
from obstools import PROMTOOL, Scrape, promtool_check_metrics

NOW = 1_000_000.0


def config() -> QueueConfig:
    return QueueConfig(pools={"a100": PoolConfig(nodes={"n1": 4, "n2": 4}), "cpu": PoolConfig(nodes={"c1": 2})})


def req(i: int, pr: str = "medium", gpus: int = 4, user: str = "ana", t: float = NOW - 100, **kw) -> JobRequest:
    return JobRequest(id=f"j-{i:012x}", user=user, pool="a100", gpus=gpus, priority=Priority(pr), submit_time=t, **kw)


def scrape(m: QueueMetrics) -> Scrape:
    return Scrape(generate_latest(m.registry).decode())


def busy_scheduler(policy: str):
    s = make_scheduler(config(), policy)
    s.submit(req(1, "low", gpus=4, user="bo"), NOW)
    s.submit(req(2, "low", gpus=3, user="bo"), NOW)
    for d in s.tick(NOW):  # both start: 1 GPU left of 8
        if isinstance(d, Start):
            s.started(d.job_id, NOW)
    s.submit(req(3, "high", t=NOW - 600), NOW)
    s.submit(req(4, "medium", t=NOW - 60), NOW)
    s.submit(req(5, "medium", t=NOW - 30), NOW)
    s.submit(req(6, "low", gpus=1, t=NOW - 10, not_before=NOW + 3600), NOW)  # in retry backoff
    return s


def test_scheduler_gauges_fairshare_and_fifo() -> None:
    for policy in ("gpuqueue", "fifo"):
        s = busy_scheduler(policy)
        m = QueueMetrics(policy=policy)
        m.collect_scheduler(lambda s=s: s).clock = lambda: NOW
        x = scrape(m)
        assert x.get("gpuqueue_pool_gpus", pool="a100") == 8, policy
        assert x.get("gpuqueue_pool_gpus_allocated", pool="a100") == 7
        assert x.get("gpuqueue_pool_jobs_running", pool="a100") == 2
        assert x.get("gpuqueue_queue_depth", pool="a100", priority="high") == 1
        assert x.get("gpuqueue_queue_depth", pool="a100", priority="medium") == 2
        assert x.get("gpuqueue_queue_depth", pool="a100", priority="low") == 1
        assert x.get("gpuqueue_queue_backoff_jobs", pool="a100") == 1
        assert x.get("gpuqueue_queue_oldest_wait_seconds", pool="a100", priority="high") == 600
        assert x.get("gpuqueue_queue_oldest_wait_seconds", pool="a100", priority="medium") == 60
        assert x.get("gpuqueue_pool_gpus_idle_while_work_waits", pool="a100") == 1
        assert x.get("gpuqueue_queue_depth", pool="cpu", priority="high") == 0
        assert x.get("gpuqueue_pool_gpus_idle_while_work_waits", pool="cpu") == 0  # nothing waits there
        assert x.get("gpuqueue_node_up", node="n1", pool="a100") == 1
        assert x.sum("gpuqueue_node_gpus_allocated", pool="a100") == 7
        if policy == "gpuqueue":
            assert x.get("gpuqueue_user_gpus_allocated", user="bo") == 7
            assert x.get("gpuqueue_user_usage_gpu_seconds", user="bo") > 0
        if PROMTOOL:
            lint = promtool_check_metrics(x.text)
            assert lint.returncode == 0, lint.stdout + lint.stderr


def test_standby_and_broken_schedulers_do_not_break_a_scrape() -> None:
    m = QueueMetrics(mode="cluster")
    m.collect_scheduler(lambda: None)  # a standby daemon: no queue gauges
    m.set_leader(False)
    x = scrape(m)
    assert x.get("gpuqueue_scheduler_leader") == 0
    assert not x.series("gpuqueue_queue_depth")

    class Broken:
        def snapshot(self):
            raise RuntimeError("dictionary changed size during iteration")

    m2 = QueueMetrics()
    m2.collect_scheduler(lambda: Broken())
    x = scrape(m2)
    assert x.get("gpuqueue_metrics_read_errors_total") == 1
    assert not x.series("gpuqueue_pool_gpus")



def test_scrapes_from_a_thread_while_the_scheduler_changes() -> None:
    s = make_scheduler(config(), "gpuqueue")
    m = QueueMetrics()
    m.collect_scheduler(lambda: s)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 100
        while not stop.is_set():
            s.submit(req(i, gpus=8), time.time())
            if i % 3 == 0:
                s.cancel(f"j-{i - 1:012x}", time.time())
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(200):
            try:
                generate_latest(m.registry)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert scrape(m).get("gpuqueue_metrics_read_errors_total") == 0


def job(jid: str = "j-aaaaaaaaaaaa", **kw) -> JobRecord:
    return JobRecord(id=jid, owner="ana", spec=JobSpec(kind="command", command=["x"], pool="a100", gpus=1), **kw)


def test_events_count_outcomes_waits_and_retries() -> None:
    m = QueueMetrics()
    m.init_pools(["a100"])
    j = job(created_at=NOW - 50)
    m.on_event("submitted", {"job": j})
    j.attempts.append(Attempt(number=1, node="n1", gpu_ids=[3], started_at=NOW - 20))
    j.state = "running"
    m.on_event("state", {"job": j, "old": "starting", "new": "running"})
    m.on_event("started", {"job": j})
    m.on_event("event", {"job": j, "type": "metrics", "data": {"step": 7, "t": NOW, "loss": 1.5, "note": "x"}})
    m.on_event("event", {"job": j, "type": "log", "data": {"line": "hi"}})
    m.on_event("pass", {"seconds": 0.002})
    x = scrape(m)
    assert x.get("gpuqueue_queue_wait_seconds_sum", pool="a100", priority="medium") == 30
    assert x.get("gpuqueue_job_training_metric", job_id=j.id, user="ana", pool="a100", name="loss") == 1.5
    assert x.get("gpuqueue_job_training_step", job_id=j.id, user="ana", pool="a100") == 7
    assert x.get("gpuqueue_job_gpu_info", job_id=j.id, user="ana", pool="a100", node="n1", gpu="3") == 1
    assert x.get("gpuqueue_scheduler_pass_duration_seconds_count") == 1
    assert x.get("gpuqueue_scheduler_last_pass_timestamp_seconds") > 0
    # preempted: requeued (a retry caused by preemption), then a second attempt after backoff
    j.attempts[-1].ended_at, j.attempts[-1].outcome = NOW - 10, Outcome.PREEMPTED
    j.state = "queued"
    m.on_event("state", {"job": j, "old": "running", "new": "queued"})
    m.on_event("attempt_ended", {"job": j, "outcome": "preempted"})
    j.not_before = NOW - 8
    j.attempts.append(Attempt(number=2, node="n2", started_at=NOW - 3))
    assert queue_wait_seconds(j) == 5  # from the end of its backoff, not from submission
    m.on_event("started", {"job": j})
    j.state = "succeeded"
    m.on_event("state", {"job": j, "old": "running", "new": "succeeded"})
    m.on_event("attempt_ended", {"job": j, "outcome": "succeeded"})
    x = scrape(m)
    assert x.get("gpuqueue_preemptions_total", pool="a100") == 1
    assert x.get("gpuqueue_job_retries_total", pool="a100", cause="preempted") == 1
    assert x.get("gpuqueue_job_retries_total", pool="a100", cause="failed") == 0
    assert x.get("gpuqueue_jobs_finished_total", pool="a100", outcome="succeeded") == 1
    assert x.get("gpuqueue_job_attempts_ended_total", pool="a100", outcome="succeeded") == 1
    assert x.get("gpuqueue_queue_wait_seconds_count", pool="a100", priority="medium") == 2
    assert not x.series("gpuqueue_job_training_metric") and not x.series("gpuqueue_job_gpu_info")


def test_training_series_are_bounded() -> None:
    m = QueueMetrics(max_jobs=2, max_names=3)
    jobs = [job(f"j-{i:012x}") for i in range(3)]
    for j in jobs:
        m.on_event("started", {"job": j})
        m.on_event("event", {"job": j, "type": "metrics",
                             "data": {"step": 1, **{f"m{k}": float(k) for k in range(5)}}})
    x = scrape(m)
    assert len(x.series("gpuqueue_job_training_metric")) == 2 * 3  # 2 jobs x 3 names
    assert {s["name"] for s in x.series("gpuqueue_job_training_metric")} == {"m0", "m1", "m2"}
    assert x.get("gpuqueue_job_metrics_dropped_total", reason="jobs") == 1
    assert x.get("gpuqueue_job_metrics_dropped_total", reason="names") == 2 * 2
    # a job ending makes room
    m.on_event("state", {"job": jobs[0], "old": "running", "new": "cancelled"})
    m.on_event("event", {"job": jobs[2], "type": "metrics", "data": {"m0": 9.0}})
    x = scrape(m)
    assert x.get("gpuqueue_job_training_metric", job_id=jobs[2].id, user="ana", pool="a100", name="m0") == 9.0
    # an allow-list keeps only those names, whatever their order
    m2 = QueueMetrics(names=["eval_loss"])
    m2.on_event("event", {"job": jobs[0], "type": "metrics", "data": {"loss": 1.0, "eval_loss": 2.0}})
    assert [s["name"] for s in scrape(m2).series("gpuqueue_job_training_metric")] == ["eval_loss"]


def test_training_series_bounds_come_from_the_environment(monkeypatch) -> None:
    """docs/metrics.md: GPUQUEUE_METRICS_MAX_JOBS / _MAX_NAMES / _JOB_NAMES, read from the
    environment of the process that serves the metrics; names cut to 64 characters."""
    monkeypatch.setenv("GPUQUEUE_METRICS_MAX_JOBS", "1")
    monkeypatch.setenv("GPUQUEUE_METRICS_MAX_NAMES", "2")
    m = QueueMetrics()
    long_name = "x" * 80
    for j in (job("j-000000000001"), job("j-000000000002")):
        m.on_event("started", {"job": j})
        m.on_event("event", {"job": j, "type": "metrics", "data": {"step": 1, long_name: 1.0, "b": 2.0, "c": 3.0}})
    x = scrape(m)
    assert sorted(s["name"] for s in x.series("gpuqueue_job_training_metric")) == ["b", "x" * 64]
    assert x.get("gpuqueue_job_metrics_dropped_total", reason="jobs") == 1
    monkeypatch.setenv("GPUQUEUE_METRICS_JOB_NAMES", " c , a")
    m2 = QueueMetrics()
    m2.on_event("event", {"job": job(), "type": "metrics", "data": {"b": 2.0, "c": 3.0}})
    assert [s["name"] for s in scrape(m2).series("gpuqueue_job_training_metric")] == ["c"]


def test_a_metric_name_that_is_no_text_does_not_break_the_scrape() -> None:
    """A job's metrics record is JSON it wrote: "\\ud800" parses into half a surrogate pair, which
    cannot be encoded, so every scrape of the server failed (500) while the job ran."""
    m = QueueMetrics()
    j = job("j-00000000000a")
    m.on_event("started", {"job": j})
    m.on_event("event", {"job": j, "type": "metrics", "data": {"step": 1, "loss\ud800": 1.0, "acc": 0.5}})
    x = scrape(m)
    assert [s["name"] for s in x.series("gpuqueue_job_training_metric")] == ["acc"]


def test_request_timer_skips_event_streams() -> None:
    m = QueueMetrics()
    seen = []

    def handler(ctype: str, status: int = 200):
        h = types.SimpleNamespace(_headers={"Content-Type": ctype}, get_status=lambda: status,
                                  request=types.SimpleNamespace(method="GET", request_time=lambda: 0.012))
        return h

    log_fn = tornado_log_function(m, inner=seen.append)
    log_fn(handler("application/json"))
    log_fn(handler("text/event-stream"))
    x = scrape(m)
    assert x.get("gpuqueue_api_request_duration_seconds_count", handler="SimpleNamespace", method="GET", code="200") == 1
    assert len(seen) == 2  # Jupyter's own request log still sees every request


def test_attach_once_and_only_the_leader_reports_the_queue() -> None:
    from gpuqueue.observability.metrics import attach

    class Daemon:  # what attach() needs of a queue process (the cluster daemon has the same)
        def __init__(self) -> None:
            self.listeners: list = []
            self.config = config()
            self.policy = "gpuqueue"
            self.scheduler = busy_scheduler("gpuqueue")
            self.lock = threading.Lock()

    d = Daemon()
    m = attach(d, mode="cluster", lock=d.lock, nvml=False, leader=False)
    assert attach(d) is m and d.listeners == [m.on_event]
    x = scrape(m)
    assert x.get("gpuqueue_scheduler_leader") == 0
    assert not x.series("gpuqueue_queue_depth")  # a standby never doubles the leader's figures
    assert x.get("gpuqueue_jobs_finished_total", pool="a100", outcome="failed") == 0  # zero series
    assert x.get("gpuqueue_build_info", version=x.series("gpuqueue_build_info")[0]["version"],
                 mode="cluster", policy="gpuqueue") == 1
    m.set_leader(True)
    x = scrape(m)
    assert x.get("gpuqueue_queue_depth", pool="a100", priority="high") == 1
    assert time.time() - x.get("gpuqueue_scheduler_last_pass_timestamp_seconds") < 60


def test_forwarding_extension_reports_no_queue() -> None:
    """In cluster mode the Jupyter extension forwards to the API service and holds no queue."""
    from jupyter_gpuqueue.metrics_handler import setup_metrics
    from jupyter_gpuqueue.remote import RemoteService

    settings = {"gpuqueue_service": RemoteService("http://127.0.0.1:9", "t")}
    m = setup_metrics(settings)
    assert setup_metrics(settings) is m and callable(settings["log_function"])
    x = scrape(m)
    assert x.get("gpuqueue_scheduler_leader") == 0
    assert not x.series("gpuqueue_pool_gpus") and not x.series("gpuqueue_nvml_up")
    assert x.series("gpuqueue_build_info")[0]["mode"] == "forwarding"
