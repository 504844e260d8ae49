"""Per-job Prometheus series of the running jobs: their latest training metrics (``gpuqueue.log``),
step, progress and GPUs, kept by ``RunningJobs`` (fed by ``QueueMetrics.on_event``) and read at
scrape time. Cardinality is bounded (docs/metrics.md, "Cardinality")."""

from __future__ import annotations

import threading
from typing import Any, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

# per-job training metrics: bounded label cardinality (docs/metrics.md, "Cardinality")
DEFAULT_MAX_JOBS = 200
DEFAULT_MAX_NAMES = 16
NAME_MAX_LEN = 64
_NOT_METRICS = frozenset({"step", "global_step", "t", "time", "timestamp"})


def job_pool(job: Any) -> str:
    """The pool a job (or its spec) names; ``unknown`` when it names none."""
    spec = getattr(job, "spec", None)
    return str(getattr(spec, "pool", None) or getattr(job, "pool", None) or "unknown")


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
            r = _Running(jid, str(getattr(job, "owner", "") or ""), job_pool(job), node, gpus)
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
