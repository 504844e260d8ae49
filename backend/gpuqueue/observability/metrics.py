"""Prometheus metrics of the queue: jobs, scheduler, GPUs, API, and running jobs' training metrics.

Two kinds of source, so that scraping costs the scheduler nothing between scrapes:

* **Events** (counters and histograms): ``QueueMetrics.on_event`` is a ``service.listeners``
  callback. It turns "submitted", "started", "state", "attempt_ended", "pass" and "event"
  notifications into counter increments and histogram observations (a dict lookup and an add).
* **State** (gauges): ``SchedulerCollector`` reads the scheduler's ``snapshot()``,
  ``pending_summary()`` and ``node_views()`` *at scrape time*: queue depth by pool and priority,
  GPUs total/allocated/idle, per-user decayed usage, nodes. Nothing is kept up to date in between.

Embedded mode: ``attach(service)`` does both (the Jupyter extension's ``/gpuqueue/metrics``
handler calls it once). Cluster processes::

    from gpuqueue.observability import metrics
    m = metrics.attach(daemon, mode="cluster", lock=daemon_lock)  # scheduler daemon (leader)
    m.set_leader(False)                                             # ... when it loses the lock
    metrics.serve_metrics(9464, m.registry)                         # /metrics on :9464

    reg = metrics.process_registry("worker", node="gpu-07")         # a worker: process + NVML
    metrics.serve_metrics(9465, reg)

The per-job series of running jobs live in ``jobseries`` (``RunningJobs``), the scheduler gauges
in ``schedgauges`` (``SchedulerCollector``); their names are importable from here too.

Every metric is described in ``docs/metrics.md``; the names follow Prometheus' rules
(``gpuqueue_`` prefix, base units, ``_total`` on counters).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..queue.states import STATE_GROUPS
from .jobseries import (DEFAULT_MAX_JOBS, DEFAULT_MAX_NAMES, NAME_MAX_LEN, RunningJobs, job_pool, progress_ratio,
                        training_values)
from .schedgauges import PRIORITIES, SchedulerCollector, pending_summary

__all__ = [
    "QueueMetrics", "attach", "process_registry", "render", "serve_metrics", "port_error", "tornado_log_function",
    "method_label", "HTTP_METHODS", "queue_wait_seconds", "FINAL_STATES", "ATTEMPT_OUTCOMES", "RETRY_CAUSES",
    "WAIT_BUCKETS", "PASS_BUCKETS", "API_BUCKETS",
    # kept in jobseries and schedgauges, importable from here as before
    "RunningJobs", "training_values", "progress_ratio", "job_pool", "DEFAULT_MAX_JOBS", "DEFAULT_MAX_NAMES",
    "NAME_MAX_LEN", "SchedulerCollector", "pending_summary", "PRIORITIES",
]

log = logging.getLogger("gpuqueue.metrics")

FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "cancelled", "timed_out", "preempted", "lost")
RETRY_CAUSES = ("failed", "preempted", "lost")

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, raw, default)
        return default


def _value(v: Any) -> str:
    return str(getattr(v, "value", v))


def _job_priority(job: Any) -> str:
    spec = getattr(job, "spec", None)
    p = getattr(spec, "priority", None) or getattr(job, "priority", None)
    return _value(p) if p is not None else "medium"


def queue_wait_seconds(job: Any) -> Optional[float]:
    """How long the job's current attempt waited for GPUs: from submission (first attempt) or
    from the end of the previous attempt and its retry backoff (later attempts) to its launch."""
    attempts = getattr(job, "attempts", None) or []
    if not attempts:
        return None
    started = getattr(attempts[-1], "started_at", None)
    if started is None:
        return None
    if len(attempts) == 1:
        since = getattr(job, "created_at", None)
    else:
        prev = attempts[-2]
        since = getattr(prev, "ended_at", None) or getattr(prev, "started_at", None)
        nb = getattr(job, "not_before", None)
        if since is not None and nb:
            since = max(since, nb)
    if since is None:
        return None
    return max(0.0, float(started) - float(since))


# ------------------------------------------------------------------------------ the metrics
class QueueMetrics:
    """All metrics of one queue process, in their own registry (``self.registry``).

    ``on_event`` is the listener; ``collect_scheduler`` adds the scrape-time gauges;
    ``observe_request`` records API latency; ``set_leader`` the daemon's leadership.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None, *, mode: str = "embedded",
                 policy: str = "", max_jobs: Optional[int] = None, max_names: Optional[int] = None,
                 names: Optional[Iterable[str]] = None):
        from ..__about__ import __version__

        r = self.registry = registry if registry is not None else CollectorRegistry()
        Gauge("gpuqueue_build_info", "Always 1: the gpuqueue version, mode and policy of this process",
              ["version", "mode", "policy"], registry=r,
              multiprocess_mode="max").labels(__version__, mode, policy).set(1)
        self.submitted = Counter("gpuqueue_jobs_submitted", "Jobs accepted into the queue",
                                 ["pool", "priority"], registry=r)
        self.starts = Counter("gpuqueue_job_starts", "Job attempts confirmed running",
                              ["pool", "priority"], registry=r)
        self.finished = Counter("gpuqueue_jobs_finished", "Jobs that reached a final state, by "
                                "outcome", ["pool", "outcome"], registry=r)
        self.attempts = Counter("gpuqueue_job_attempts_ended", "Job attempts that ended, by outcome "
                                "(preempted and lost attempts included)", ["pool", "outcome"], registry=r)
        self.preemptions = Counter("gpuqueue_preemptions", "Attempts stopped by preemption",
                                   ["pool"], registry=r)
        self.retries = Counter("gpuqueue_job_retries", "Jobs queued again after an attempt ended, by "
                               "cause (failed, preempted, lost)", ["pool", "cause"], registry=r)
        self.wait = Histogram("gpuqueue_queue_wait_seconds", "Time a job attempt waited for GPUs, "
                              "observed when it starts", ["pool", "priority"], buckets=WAIT_BUCKETS,
                              registry=r)
        self.pass_duration = Histogram("gpuqueue_scheduler_pass_duration_seconds", "Duration of one "
                                       "scheduling pass (decisions and carrying them out)",
                                       buckets=PASS_BUCKETS, registry=r)
        self.last_pass = Gauge("gpuqueue_scheduler_last_pass_timestamp_seconds", "When the last "
                               "scheduling pass ended (Unix time)", registry=r, multiprocess_mode="max")
        self.leader = Gauge("gpuqueue_scheduler_leader", "1 when this process runs the scheduler (the "
                            "leader daemon, or an embedded queue), 0 on a standby", registry=r,
                            multiprocess_mode="livemax")
        self.api_latency = Histogram("gpuqueue_api_request_duration_seconds", "REST API request "
                                     "latency (streaming requests excluded)", ["handler", "method", "code"],
                                     buckets=API_BUCKETS, registry=r)
        self.running = RunningJobs(
            r,
            max_jobs=max_jobs if max_jobs is not None else _env_int("GPUQUEUE_METRICS_MAX_JOBS", DEFAULT_MAX_JOBS),
            max_names=max_names if max_names is not None else _env_int("GPUQUEUE_METRICS_MAX_NAMES", DEFAULT_MAX_NAMES),
            names=names if names is not None else [
                n.strip() for n in os.environ.get("GPUQUEUE_METRICS_JOB_NAMES", "").split(",") if n.strip()
            ],
        )
        self._scheduler_collector: Optional[SchedulerCollector] = None
        self.is_leader = False
        self.known_pools: Optional[Callable[[], Optional[Iterable[str]]]] = None
        """The queue's pools now (``attach`` sets it); a job's pool outside them is ``unknown``."""

    # -- setup ----------------------------------------------------------------------------
    def init_pools(self, pools: Iterable[str]) -> None:
        """Create the zero series of each pool, so rates and alerts work from the first scrape."""
        for pool in pools:
            for pr in PRIORITIES:
                self.submitted.labels(pool, pr)
                self.starts.labels(pool, pr)
                self.wait.labels(pool, pr)
            for o in FINAL_STATES:
                self.finished.labels(pool, o)
            for o in ATTEMPT_OUTCOMES:
                self.attempts.labels(pool, o)
            for c in RETRY_CAUSES:
                self.retries.labels(pool, c)
            self.preemptions.labels(pool)

    def collect_scheduler(self, get_scheduler: Callable[[], Any], lock: Any = None) -> SchedulerCollector:
        """Add the scrape-time scheduler gauges (once)."""
        if self._scheduler_collector is None:
            self._scheduler_collector = SchedulerCollector(get_scheduler, lock)
            self.registry.register(self._scheduler_collector)
        return self._scheduler_collector

    def add_nvml(self, watch_xid: bool = True) -> None:
        """Add the per-GPU NVML collector (reports ``gpuqueue_nvml_up 0`` without NVML)."""
        from .nvml import NvmlCollector

        self.registry.register(NvmlCollector(watch_xid=watch_xid))

    def seed_running(self, jobs: Iterable[Any]) -> None:
        """Start per-job series for jobs already running when metrics are attached."""
        for job in jobs:
            self.running.add(job)

    def set_leader(self, leader: bool) -> None:
        """Whether this process runs the scheduler. Queue gauges (``attach``) are only reported
        while it does, so a standby daemon never doubles the leader's figures."""
        self.is_leader = bool(leader)
        self.leader.set(1 if leader else 0)

    # -- events ---------------------------------------------------------------------------
    def _pool_label(self, job: Any) -> str:
        """The ``pool`` label of ``job``: its pool if the queue has one of that name, else
        ``unknown``. A job the API took before any scheduler had published its config names a
        pool no one checked yet; it fails when the scheduler admits it, and its made-up name
        (one per request, if a user likes) must not become a series."""
        pool = job_pool(job)
        known = self.known_pools() if self.known_pools is not None else None
        return pool if known is None or pool in known else "unknown"

    def on_event(self, what: str, data: dict[str, Any]) -> None:
        """The ``service.listeners`` callback. Cheap: a few dict lookups per event."""
        if what == "event":
            t = data.get("type")
            if t == "metrics":
                self.running.record_metrics(data.get("job"), data.get("data"))
            elif t == "progress":
                self.running.record_progress(data.get("job"), data.get("data"))
            return
        if what == "pass":
            s = data.get("seconds")
            if isinstance(s, (int, float)):
                self.pass_duration.observe(s)
            self.last_pass.set(time.time())
            return
        job = data.get("job")
        if job is None:
            return
        pool = self._pool_label(job)
        if what == "submitted":
            self.submitted.labels(pool, _job_priority(job)).inc()
        elif what == "started":
            pr = _job_priority(job)
            self.starts.labels(pool, pr).inc()
            w = queue_wait_seconds(job)
            if w is not None:
                self.wait.labels(pool, pr).observe(w)
            self.running.add(job)
        elif what == "state":
            new = _value(data.get("new"))
            if new in FINAL_STATES:
                self.finished.labels(pool, new).inc()
            if new in ("starting", "running"):
                self.running.add(job)
            else:
                self.running.remove(getattr(job, "id", None))
        elif what == "attempt_ended":
            outcome = _value(data.get("outcome"))
            self.attempts.labels(pool, outcome).inc()
            if outcome == "preempted":
                self.preemptions.labels(pool).inc()
            if _value(getattr(job, "state", "")) in STATE_GROUPS["waiting"]:
                self.retries.labels(pool, outcome).inc()
            self.running.remove(getattr(job, "id", None))

    # -- API ------------------------------------------------------------------------------
    def observe_request(self, handler: str, method: str, code: int | str, seconds: float) -> None:
        """One finished API request."""
        self.api_latency.labels(handler, method, str(code)).observe(seconds)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
"""The ``method`` label's values; any other method a client sends (HTTP allows any token, and
tornado answers it 405 before authentication) is counted as ``other``, so that no client can
add series at will."""


def method_label(method: Optional[str]) -> str:
    """``method`` as the ``method`` label: one of :data:`HTTP_METHODS`, else ``other``."""
    return method if method in HTTP_METHODS else "other"


def tornado_log_function(metrics: QueueMetrics, inner: Optional[Callable[[Any], None]] = None,
                         include: Callable[[Any], bool] = lambda h: True) -> Callable[[Any], None]:
    """A tornado ``log_function`` (application setting) that records every finished request that
    ``include(handler)`` accepts in ``gpuqueue_api_request_duration_seconds``, then calls
    ``inner`` (the previous log function). Server-sent-event streams are left out (they last as
    long as the job)."""

    def log_function(handler: Any) -> None:
        try:
            if include(handler):
                ctype = str(getattr(handler, "_headers", {}).get("Content-Type", ""))
                if not ctype.startswith("text/event-stream"):
                    metrics.observe_request(type(handler).__name__, method_label(handler.request.method),
                                            handler.get_status(), handler.request.request_time())
        except Exception:  # noqa: BLE001 - timing must never break a request
            log.debug("request timing failed", exc_info=True)
        if inner is not None:
            inner(handler)

    log_function._gpuqueue_metrics = metrics  # type: ignore[attr-defined]
    return log_function


_attached: "weakref.WeakKeyDictionary[Any, QueueMetrics]" = weakref.WeakKeyDictionary()
_attach_lock = threading.Lock()


def attach(service: Any, registry: Optional[CollectorRegistry] = None, *, mode: str = "embedded",
           lock: Any = None, nvml: bool = True, leader: bool = True, **opts: Any) -> QueueMetrics:
    """Metrics for a queue service, once per service (a second call returns the first's).

    ``service`` needs ``listeners`` (a list of ``fn(what, data)``), ``scheduler`` (read at each
    scrape while ``leader``; call ``set_leader`` as leadership changes) and optionally
    ``config.pools`` (zero series per pool), ``policy``, and ``store.list(states=...)`` (jobs
    already running). ``QueueService`` has all. ``lock``: held by the thread that changes the
    scheduler, when scrapes come from another thread (``serve_metrics``).
    """
    with _attach_lock:
        m = _attached.get(service)
        if m is not None:
            return m
        m = QueueMetrics(registry, mode=mode, policy=str(getattr(service, "policy", "") or ""), **opts)
        pools = getattr(getattr(service, "config", None), "pools", None) or {}
        m.init_pools(pools)
        m.known_pools = lambda: getattr(getattr(service, "config", None), "pools", None)
        m.collect_scheduler(lambda: service.scheduler if m.is_leader else None, lock)
        if nvml:
            m.add_nvml()
        store = getattr(service, "store", None)
        if store is not None:
            try:
                from ..queue.states import JobState

                m.seed_running(store.list(states=(JobState.STARTING, JobState.RUNNING), limit=100_000))
            except Exception:  # noqa: BLE001 - a store without list(): no seeding
                log.debug("could not list running jobs for metrics", exc_info=True)
        m.set_leader(leader)
        m.last_pass.set(time.time())  # a loop that never passes still trips the stall alert
        service.listeners.append(m.on_event)
        _attached[service] = m
        return m


def process_registry(component: str, node: Optional[str] = None, nvml: bool = True,
                     registry: Optional[CollectorRegistry] = None) -> CollectorRegistry:
    """A registry for a cluster process with no queue of its own (a worker, the API service):
    process and Python runtime metrics, ``gpuqueue_build_info``, and NVML GPUs (``nvml``).
    Add ``QueueMetrics(registry=...)`` to the same registry for API latency."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    from ..__about__ import __version__

    r = registry if registry is not None else CollectorRegistry()
    ProcessCollector(registry=r)
    PlatformCollector(registry=r)
    GCCollector(registry=r)
    Gauge("gpuqueue_process_info", "Always 1: which gpuqueue process this is",
          ["component", "node", "version"], registry=r,
          multiprocess_mode="liveall").labels(component, node or "", __version__).set(1)
    if nvml:
        from .nvml import NvmlCollector

        r.register(NvmlCollector())
    return r


def render(registry: CollectorRegistry, accept: Optional[str] = None) -> tuple[bytes, str]:
    """(body, content type) of a scrape: OpenMetrics when ``accept`` asks for it, else the
    Prometheus text format 0.0.4."""
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def port_error(port: int, e: OSError, addr: Optional[str] = None) -> str:
    """What a process says when ``serve_metrics`` cannot listen on ``port`` (of ``addr``, when
    the process lets the admin choose it)."""
    if addr is not None and e.errno != errno.EADDRINUSE:
        return (f"cannot serve /metrics on {addr}:{port} ({e.strerror or e}): give --metrics-address an "
                f"address of this host")
    return (f"cannot serve /metrics on port {port} ({e.strerror}): stop what holds that port or choose "
            f"another --metrics-port (each process on a host needs its own)")


def serve_metrics(port: int, registry: CollectorRegistry, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns the server (``.shutdown()``).

    The scrape runs on that thread: give ``attach(..., lock=...)`` the lock your scheduler
    thread holds, or rely on the collector's retry (see ``SchedulerCollector``)."""
    from prometheus_client import start_http_server

    out = start_http_server(port, addr=addr, registry=registry)
    return out[0] if isinstance(out, tuple) else out
