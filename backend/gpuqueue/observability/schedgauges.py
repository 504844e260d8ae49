"""Gauges read from the scheduler at scrape time (``SchedulerCollector``): queue depth by pool and
priority, GPUs total/allocated/idle, per-user decayed usage, nodes. Nothing is kept up to date
between scrapes, so scraping costs the scheduler nothing in between."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..scheduler.base import NodeView

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler.base import Scheduler

log = logging.getLogger("gpuqueue.metrics")

PRIORITIES = ("high", "medium", "low")


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
