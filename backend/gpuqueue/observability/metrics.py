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
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..queue.states import STATE_GROUPS
from ..scheduler.base import NodeView

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler.base import Scheduler

log = logging.getLogger("gpuqueue.metrics")

PRIORITIES = ("high", "medium", "low")
FINAL_STATES = ("succeeded", "failed", "cancelled", "timed_out")
ATTEMPT_OUTCOMES = ("succeeded", "failed", "cancelled", "timed_out", "preempted", "lost")
RETRY_CAUSES = ("failed", "preempted", "lost")

WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# per-job training metrics: bounded label cardinality (docs/metrics.md, "Cardinality")
DEFAULT_MAX_JOBS = 200
DEFAULT_MAX_NAMES = 16
NAME_MAX_LEN = 64
_NOT_METRICS = frozenset({"step", "global_step", "t", "time", "timestamp"})


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        log.warning("%s=%r is not a whole number; using %d", name, raw, default)
        return default


def _value(v: Any) -> str:
    return str(getattr(v, "value", v))


def _job_pool(job: Any) -> str:
    spec = getattr(job, "spec", None)
    return str(getattr(spec, "pool", None) or getattr(job, "pool", None) or "unknown")


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


# --------------------------------------------------------------------------- per-job series
def training_values(data: Any) -> tuple[Optional[float], dict[str, float]]:
    """(step, {name: value}) of a ``metrics`` event. Accepts the job-side API's flat records
    (``{"step": 10, "t": ..., "loss": 0.3}``), ``{"step": .., "metrics": {..}}``, and batches
    under ``records``/``batch`` (the last value of each name wins). Non-numbers are skipped."""
    if not isinstance(data, dict):
        return None, {}
    step: Optional[float] = None
    out: dict[str, float] = {}
    batch = next((data[k] for k in ("records", "batch") if isinstance(data.get(k), list)), None)
    for rec in batch if batch is not None else [data]:
        if not isinstance(rec, dict):
            continue
        nested = rec.get("metrics")
        values = nested if isinstance(nested, dict) else rec
        s = rec.get("step", rec.get("global_step"))
        if isinstance(s, (int, float)) and not isinstance(s, bool):
            step = float(s)
        for k, v in values.items():
            if k in _NOT_METRICS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            name = str(k)[:NAME_MAX_LEN]
            try:  # half a surrogate pair ("\ud800" in the job's JSON) would fail every scrape
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            out[name] = float(v)
    return step, out


def progress_ratio(data: Any) -> Optional[float]:
    """done/total of a ``progress`` event, clamped to 0..1; None when there is no total."""
    if not isinstance(data, dict):
        return None
    for key in ("ratio", "fraction"):
        v = data.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return min(1.0, max(0.0, float(v)))
    done, total = data.get("done"), data.get("total")
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        return min(1.0, max(0.0, float(done) / float(total)))
    return None


class _Running:
    __slots__ = ("job_id", "user", "pool", "node", "gpus", "values", "step", "progress")

    def __init__(self, job_id: str, user: str, pool: str, node: str, gpus: list[tuple[str, str]]):
        self.job_id, self.user, self.pool, self.node, self.gpus = job_id, user, pool, node, gpus
        self.values: dict[str, float] = {}
        self.step: Optional[float] = None
        self.progress: Optional[float] = None


def _job_gpus(job: Any) -> tuple[str, list[tuple[str, str]]]:
    attempts = getattr(job, "attempts", None) or []
    if not attempts:
        return "", []
    a = attempts[-1]
    node = str(getattr(a, "node", "") or "")
    placement = getattr(a, "placement", None) or {}
    devices = getattr(a, "gpu_ids", None) or []
    if len(placement) <= 1 and devices:  # one node: the devices the job saw (NVML indices there)
        return node, [(node, str(d)) for d in devices]
    return node, [(str(n), str(i)) for n, ids in placement.items() for i in ids]


class RunningJobs:
    """Latest training metrics, step, progress and GPUs of each running job, read at scrape time.

    Cardinality is bounded three ways: only running jobs have series (they go when the job
    stops); at most ``max_jobs`` jobs carry training metrics; per job only the names in
    ``names`` (when given) or else its first ``max_names`` names. Whatever is left out is counted
    in ``gpuqueue_job_metrics_dropped_total``.
    """

    def __init__(self, registry: CollectorRegistry, max_jobs: int = DEFAULT_MAX_JOBS,
                 max_names: int = DEFAULT_MAX_NAMES, names: Optional[Iterable[str]] = None):
        self.max_jobs = max_jobs
        self.max_names = max_names
        self.names = frozenset(names) if names else None
        self._jobs: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self.dropped = Counter(
            "gpuqueue_job_metrics_dropped", "Training metric names or jobs left out of the per-job "
            "series by the cardinality limits", ["reason"], registry=registry)
        for r in ("names", "jobs"):
            self.dropped.labels(r)
        registry.register(self)

    def add(self, job: Any) -> None:
        jid = getattr(job, "id", None)
        if jid is None:
            return
        node, gpus = _job_gpus(job)
        with self._lock:
            cur = self._jobs.get(jid)
            if cur is not None and cur.gpus == gpus:
                return
            r = _Running(jid, str(getattr(job, "owner", "") or ""), _job_pool(job), node, gpus)
            if cur is not None:
                r.values, r.step, r.progress = cur.values, cur.step, cur.progress
            self._jobs[jid] = r

    def remove(self, job_id: Optional[str]) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)  # type: ignore[arg-type]
            self._warned = {w for w in self._warned if w[0] != job_id}

    def __len__(self) -> int:
        return len(self._jobs)

    def record_metrics(self, job: Any, data: Any) -> None:
        step, values = training_values(data)
        if not values and step is None:
            return
        with self._lock:
            r = self._jobs.get(getattr(job, "id", None))  # type: ignore[arg-type]
        if r is None:
            self.add(job)
            with self._lock:
                r = self._jobs.get(getattr(job, "id", None))  # type: ignore[arg-type]
            if r is None:
                return
        with self._lock:
            if not r.values and self._with_values() >= self.max_jobs:
                if (r.job_id, "") not in self._warned:
                    self._warned.add((r.job_id, ""))
                    self.dropped.labels("jobs").inc()
                return
            if step is not None:
                r.step = step
            for k, v in values.items():
                if k in r.values:
                    r.values[k] = v
                elif (self.names is None and len(r.values) < self.max_names) or (
                    self.names is not None and k in self.names
                ):
                    r.values[k] = v
                elif (r.job_id, k) not in self._warned:
                    self._warned.add((r.job_id, k))
                    self.dropped.labels("names").inc()

    def _with_values(self) -> int:
        return sum(1 for r in self._jobs.values() if r.values)

    def record_progress(self, job: Any, data: Any) -> None:
        ratio = progress_ratio(data)
        if ratio is None:
            return
        with self._lock:
            r = self._jobs.get(getattr(job, "id", None))  # type: ignore[arg-type]
            if r is not None:
                r.progress = ratio

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        with self._lock:
            jobs = [(r.job_id, r.user, r.pool, r.node, list(r.gpus), dict(r.values), r.step, r.progress)
                    for r in self._jobs.values()]
        L = ["job_id", "user", "pool"]
        metric = GaugeMetricFamily("gpuqueue_job_training_metric", "Latest value of a training metric "
                                   "a running job logged (gpuqueue.log), by metric name", labels=L + ["name"])
        step = GaugeMetricFamily("gpuqueue_job_training_step", "Latest step a running job logged", labels=L)
        prog = GaugeMetricFamily("gpuqueue_job_progress_ratio", "Fraction of its steps a running job "
                                 "reports done (gpuqueue.progress)", labels=L)
        gpus = GaugeMetricFamily("gpuqueue_job_gpu_info", "Always 1: a GPU a running job holds "
                                 "(join with gpuqueue_gpu_* on node and gpu)", labels=L + ["node", "gpu"])
        for jid, user, pool, _node, g, values, st, pr in jobs:
            lv = [jid, user, pool]
            for name, v in values.items():
                metric.add_metric(lv + [name], v)
            if st is not None:
                step.add_metric(lv, st)
            if pr is not None:
                prog.add_metric(lv, pr)
            for n, i in g:
                gpus.add_metric(lv + [n, i], 1)
        yield from (metric, step, prog, gpus)


# ----------------------------------------------------------------------- scheduler state
def pending_summary(scheduler: "Scheduler", now: float) -> dict[str, dict[str, Any]]:
    """Per pool: ``depth`` {priority: jobs waiting}, ``oldest`` {priority: earliest submit time},
    ``eligible`` (waiting and past any retry backoff) and ``backoff`` (in retry backoff), from
    the scheduler's ``pending_summary``; O(pending jobs), once per scrape."""
    return {
        pool: {"depth": dict(p.depth), "oldest": dict(p.oldest_submit), "eligible": p.eligible,
               "backoff": p.backoff}
        for pool, p in scheduler.pending_summary(now).items()
    }


class SchedulerCollector:
    """Gauges read from the scheduler at scrape time (see the module docstring).

    ``get_scheduler`` returns the scheduler or None (a standby daemon: no queue gauges then).
    With a scrape thread beside the scheduler's thread, pass the ``lock`` that thread holds while
    it mutates the scheduler; without one, a read that races a change is retried (up to 3 times).
    """

    def __init__(self, get_scheduler: Callable[[], Optional["Scheduler"]], lock: Any = None,
                 clock: Callable[[], float] = time.time):
        self.get_scheduler = get_scheduler
        self.lock = lock
        self.clock = clock
        self.errors = 0

    def describe(self) -> list[Any]:
        return []

    def _read(self, sched: "Scheduler") -> tuple[dict[str, Any], dict[str, Any], list[NodeView]]:
        now = self.clock()
        last: Optional[Exception] = None
        for _ in range(3):
            try:
                with self.lock if self.lock is not None else nullcontext():
                    snap = sched.snapshot() or {}
                    pend = pending_summary(sched, now)
                    nodes = sched.node_views()
                return snap, pend, nodes
            except RuntimeError as e:  # "dictionary changed size during iteration"
                last = e
        raise RuntimeError(f"the scheduler changed during every read: {last}")

    def collect(self) -> Iterable[Any]:
        sched = self.get_scheduler()
        snap = None
        if sched is not None:
            try:
                snap, pend, nodes = self._read(sched)
            except Exception:  # noqa: BLE001 - a scrape must not fail because of the scheduler
                log.exception("reading the scheduler for metrics failed")
                self.errors += 1
        yield CounterMetricFamily("gpuqueue_metrics_read_errors", "Scrapes in which reading the "
                                  "scheduler failed (its gauges are missing from those scrapes)",
                                  value=self.errors)
        if snap is None:
            return
        now = self.clock()
        pools = snap.get("pools") or {}
        g_total = GaugeMetricFamily("gpuqueue_pool_gpus", "GPUs of the pool's nodes that are up", labels=["pool"])
        g_alloc = GaugeMetricFamily("gpuqueue_pool_gpus_allocated", "GPUs allocated to jobs", labels=["pool"])
        g_idle = GaugeMetricFamily(
            "gpuqueue_pool_gpus_idle_while_work_waits", "Free GPUs while at least one job that is past "
            "its retry backoff waits in the pool (0 when nothing waits)", labels=["pool"])
        running = GaugeMetricFamily("gpuqueue_pool_jobs_running", "Jobs holding GPUs (running or "
                                    "stopping)", labels=["pool"])
        depth = GaugeMetricFamily("gpuqueue_queue_depth", "Jobs waiting for GPUs (retry backoff "
                                  "included)", labels=["pool", "priority"])
        backoff = GaugeMetricFamily("gpuqueue_queue_backoff_jobs", "Waiting jobs still in their retry "
                                    "backoff", labels=["pool"])
        oldest = GaugeMetricFamily("gpuqueue_queue_oldest_wait_seconds", "Age since submission of the "
                                   "oldest waiting job (0 when none waits)", labels=["pool", "priority"])
        for name in sorted(set(pools) | set(pend)):
            p = pools.get(name) or {}
            e = pend.get(name) or {"depth": {}, "oldest": {}, "eligible": 0, "backoff": 0}
            total = p.get("gpus_total")
            used = p.get("gpus_used")
            if total is not None:
                g_total.add_metric([name], float(total))
            if used is not None:
                g_alloc.add_metric([name], float(used))
            if total is not None and used is not None:
                idle = max(0.0, float(total) - float(used)) if e["eligible"] > 0 else 0.0
                g_idle.add_metric([name], idle)
            if "running" in p:
                running.add_metric([name], float(p["running"]))
            prios = list(PRIORITIES) + sorted(k for k in e["depth"] if k not in PRIORITIES)
            for pr in prios:
                depth.add_metric([name, pr], float(e["depth"].get(pr, 0)))
                t = e["oldest"].get(pr)
                oldest.add_metric([name, pr], max(0.0, now - float(t)) if t is not None else 0.0)
            backoff.add_metric([name], float(e["backoff"]))
        yield from (g_total, g_alloc, g_idle, running, depth, backoff, oldest)

        users = snap.get("users") or {}
        if users:
            usage = GaugeMetricFamily("gpuqueue_user_usage_gpu_seconds", "The user's decayed GPU usage "
                                      "that fair share ranks by (GPU-hours x 3600)", labels=["user"])
            ugpus = GaugeMetricFamily("gpuqueue_user_gpus_allocated", "GPUs the user's jobs hold", labels=["user"])
            urun = GaugeMetricFamily("gpuqueue_user_jobs_running", "The user's jobs holding GPUs", labels=["user"])
            for user, u in sorted(users.items()):
                if not isinstance(u, dict):
                    continue
                if u.get("usage_gpu_hours") is not None:
                    usage.add_metric([user], float(u["usage_gpu_hours"]) * 3600.0)
                if u.get("gpus") is not None:
                    ugpus.add_metric([user], float(u["gpus"]))
                if u.get("running") is not None:
                    urun.add_metric([user], float(u["running"]))
            yield from (usage, ugpus, urun)

        if nodes:
            up = GaugeMetricFamily("gpuqueue_node_up", "1 when the scheduler counts the node as up "
                                   "(its worker heartbeats), 0 when it is down", labels=["node", "pool"])
            ngpus = GaugeMetricFamily("gpuqueue_node_gpus", "GPUs the node declared", labels=["node", "pool"])
            nalloc = GaugeMetricFamily("gpuqueue_node_gpus_allocated", "GPUs of the node allocated to "
                                       "jobs (0 when it is down)", labels=["node", "pool"])
            for name, pool, gpus, free, is_up in sorted(nodes):
                up.add_metric([name, pool], 1 if is_up else 0)
                ngpus.add_metric([name, pool], gpus)
                nalloc.add_metric([name, pool], max(0, gpus - free) if is_up else 0)
            yield from (up, ngpus, nalloc)


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
        pool = _job_pool(job)
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
