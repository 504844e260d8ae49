"""The first policy: priority, then first come first served, no backfill.

It is the embedded mode's simplest correct scheduler and the simulator's baseline
(``--policy fifo`` with ``strict=True`` ignores priorities too: strict arrival order).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from typing import Any, Optional

from ..queue.config import QueueConfig
from ..queue.states import Outcome
from ..queue.text import count
from .admission import inadmissible
from .base import (
    Decision,
    Explanation,
    JobRequest,
    NodeView,
    Placement,
    PoolPending,
    Reject,
    Retry,
    Start,
    TimeOut,
)
from .cluster import Cluster, NodeState


def unenforced(config: QueueConfig) -> list[str]:
    """The limits in ``config`` that FIFO does not enforce (it honours only the queue depth
    limits of pools and users): user and group ``max_gpus`` / ``max_running``, group
    ``max_queued``, pool ``max_gpus_per_user``. A shell that would run FIFO on such a config
    refuses to start (see ``make_scheduler``): a quota must never be silently off."""
    out = [f"[defaults] {k}" for k in ("max_gpus", "max_running") if getattr(config.defaults, k) is not None]
    out += [f"[users.{name}] {k}" for name, u in config.users.items()
            for k in ("max_gpus", "max_running") if getattr(u, k) is not None]
    out += [f"[groups.{name}] {k}" for name, g in config.groups.items()
            for k in ("max_gpus", "max_running", "max_queued") if getattr(g, k) is not None]
    out += [f"[pools.{name}] max_gpus_per_user" for name, p in config.pools.items() if p.max_gpus_per_user is not None]
    return out


class FifoScheduler:
    """Priority then arrival order; the head of a pool's queue blocks the jobs behind it."""

    def __init__(self, config: QueueConfig, strict: bool = False, cluster: Optional[Cluster] = None):
        self.config = config
        self.strict = strict
        self.cluster = cluster or Cluster.from_config(config)
        self.pending: dict[str, JobRequest] = {}
        self.running: dict[str, tuple[JobRequest, Placement, float]] = {}
        self._order: dict[str, list[tuple]] = {}  # pool -> sorted (key..., job id) of pending jobs
        self._queued_by_user: dict[str, int] = {}
        self._deadlines: list[tuple[float, str, float]] = []  # (time limit end, job id, started at)
        self._backoffs: list[tuple[float, str]] = []  # (not before, job id) of jobs in retry backoff
        self._changed = False  # an event since the last pass: tick again
        self._now = 0.0

    # -- ordering -------------------------------------------------------------------------
    def _key(self, job: JobRequest) -> tuple:
        if self.strict:
            return (job.submit_time, job.id)
        return (job.priority.rank, job.submit_time, job.id)

    def _ordered(self, pool: Optional[str] = None) -> list[JobRequest]:
        pools = [pool] if pool is not None else sorted(self._order)
        keys = sorted(k for p in pools for k in self._order.get(p, ()))
        return [self.pending[k[-1]] for k in keys]

    def _enqueue(self, job: JobRequest) -> None:
        self._changed = True
        if job.not_before > self._now:
            heapq.heappush(self._backoffs, (job.not_before, job.id))
        self.pending[job.id] = job
        insort(self._order.setdefault(job.pool, []), self._key(job))
        self._queued_by_user[job.user] = self._queued_by_user.get(job.user, 0) + 1

    def _dequeue(self, job_id: str) -> Optional[JobRequest]:
        job = self.pending.pop(job_id, None)
        if job is not None:
            lst = self._order[job.pool]
            del lst[bisect_left(lst, self._key(job))]
            self._queued_by_user[job.user] -= 1
        return job

    # -- events ---------------------------------------------------------------------------
    def submit(self, job: JobRequest, now: float, restoring: bool = False) -> Optional[Reject]:
        self._now = max(self._now, now)
        if not restoring:
            why = inadmissible(job, self.config)
            if why:
                return Reject(job.id, why)
            queued = len(self._order.get(job.pool, ()))
            if queued >= self.config.pools[job.pool].max_queued:
                return Reject(job.id, f"pool {job.pool!r} queue is full ({queued} jobs); try later")
            mine = self._queued_by_user.get(job.user, 0)
            limit = self.config.limits_for(job.user).max_queued
            if mine >= limit:
                return Reject(job.id, f"you have {count(mine, 'queued job')}, the limit is {limit}")
        self._dequeue(job.id)
        self._enqueue(job)
        return None

    def restore_running(self, job: JobRequest, placement: Placement, started_at: float) -> None:
        self.cluster.allocate(placement)
        self._run(job, placement, started_at)

    def _run(self, job: JobRequest, placement: Placement, started_at: float) -> None:
        self.running[job.id] = (job, placement, started_at)
        limit = self._time_limit(job)
        if limit is not None:
            heapq.heappush(self._deadlines, (started_at + limit, job.id, started_at))

    def started(self, job_id: str, now: float) -> None:
        if job_id in self.running:
            job, placement, _ = self.running[job_id]
            self._run(job, placement, now)

    def finished(self, job_id: str, outcome: Outcome, now: float) -> list[Decision]:
        self._now = max(self._now, now)
        entry = self.running.pop(job_id, None)
        if entry is None:
            return []
        job, placement, _ = entry
        self.cluster.release(placement)
        self._changed = True
        return self._maybe_retry(job, outcome, now)

    def _maybe_retry(self, job: JobRequest, outcome: Outcome, now: float) -> list[Decision]:
        """Requeue a preempted or lost job at once, retry a FAILED one while retries are left
        (never one that CANNOT_START), as the fair-share policy does."""
        if outcome in (Outcome.PREEMPTED, Outcome.LOST):
            self._enqueue(job)
            return [Retry(job.id, now, counted=False)]
        if outcome == Outcome.FAILED and job.failures < job.max_retries:
            delay = min(
                self.config.retry_backoff * 2**job.failures, self.config.retry_backoff_max
            )
            again = _replace(job, failures=job.failures + 1, not_before=now + delay)
            self._enqueue(again)
            return [Retry(job.id, now + delay, counted=True)]
        return []

    def cancel(self, job_id: str, now: float) -> None:
        self._now = max(self._now, now)
        self._dequeue(job_id)
        entry = self.running.pop(job_id, None)
        if entry is not None:
            self.cluster.release(entry[1])
            self._changed = True

    def node_up(self, node: str, pool: str, gpus: int, now: float) -> None:
        self._now = max(self._now, now)
        self.cluster.nodes[node] = NodeState(node, pool, gpus, up=True)
        self._changed = True

    def node_down(self, node: str, now: float) -> list[Decision]:
        n = self.cluster.nodes.get(node)
        if n is not None:
            n.up = False
            n.free = set()
        out: list[Decision] = []
        for job_id, (job, placement, _) in list(self.running.items()):
            if node in placement:
                del self.running[job_id]
                self.cluster.release(placement)
                out += self._maybe_retry(job, Outcome.LOST, now)
        return out

    def node_cordon(self, node: str, now: float) -> None:
        """No job starts on ``node`` any more; its running jobs go on (their GPUs are not given
        back: ``Cluster.release`` skips a node that is not up)."""
        self._now = max(self._now, now)
        n = self.cluster.nodes.get(node)
        if n is not None and n.up:
            n.up = False
            n.free = set()
            self._changed = True

    def tick(self, now: float) -> list[Decision]:
        self._now = max(self._now, now)
        self._changed = False
        while self._backoffs and self._backoffs[0][0] <= now:
            heapq.heappop(self._backoffs)  # eligible from this pass on
        out: list[Decision] = []
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            _, job_id, started_at = heapq.heappop(dl)
            entry = self.running.get(job_id)
            if entry is not None and entry[2] == started_at:
                out.append(TimeOut(job_id))
        for pool in sorted(self._order):
            lst = self._order[pool]
            started: list[tuple] = []
            for key in lst:  # strict order: nobody jumps the head of the queue
                job = self.pending[key[-1]]
                if job.not_before > now:
                    continue
                placement = self.cluster.place(job.pool, job.gpus, job.nodes)
                if placement is None:
                    break
                self.cluster.allocate(placement)
                started.append(key)
                self._run(job, placement, now)
                out.append(Start(job.id, placement))
            for key in started:
                self._dequeue(key[-1])
        return out

    def _time_limit(self, job: JobRequest) -> Optional[float]:
        """min(job time limit, pool max_runtime); a limit that is not finite counts as none."""
        pc = self.config.pools.get(job.pool)
        limits = [x for x in (job.time_limit, pc.max_runtime if pc else None)
                  if x is not None and math.isfinite(x)]
        return min(limits) if limits else None

    def explain(self, job_id: str, now: float) -> Optional[Explanation]:
        job = self.pending.get(job_id)
        if job is None:
            return None
        order = self._ordered(job.pool)
        position = next(i for i, j in enumerate(order, 1) if j.id == job_id)
        if job.not_before > now:
            return Explanation("backoff", f"retrying after a failure, in {job.not_before - now:.0f}s", position)
        if position > 1:
            return Explanation("priority", f"{count(position - 1, 'job')} ahead in pool {job.pool!r}", position)
        total, free = self.cluster.capacity(job.pool)
        return Explanation(
            "resources", f"waiting for {count(job.gpus, 'GPU')} in pool {job.pool!r} ({free}/{total} free)", position
        )

    def snapshot(self) -> dict[str, Any]:
        pools = {}
        for pool in self.config.pools:
            total, free = self.cluster.capacity(pool)
            pools[pool] = {
                "gpus_total": total,
                "gpus_used": total - free,
                "queued": len(self._order.get(pool, ())),
                "running": sum(1 for j, _, _ in self.running.values() if j.pool == pool),
            }
        return {"pools": pools}


    def pending_summary(self, now: float) -> dict[str, PoolPending]:
        """Per pool: the waiting jobs by priority, and how many are past their retry backoff."""
        out = {name: PoolPending() for name in self.config.pools}
        for r in list(self.pending.values()):
            out.setdefault(r.pool, PoolPending()).add(r.priority.value, r.submit_time, r.not_before <= now)
        return out

    def node_views(self) -> list[NodeView]:
        """Every node, up or down, by name."""
        return [NodeView(n.name, n.pool, n.gpus, len(n.free), n.up)
                for n in sorted(self.cluster.nodes.values(), key=lambda n: n.name)]

    def next_wakeup(self) -> Optional[float]:
        """The earliest time-limit end or end of a retry backoff; the latest time seen if
        events came since the last pass; None if there is nothing to do."""
        dl = self._deadlines
        while dl and (dl[0][1] not in self.running or self.running[dl[0][1]][2] != dl[0][2]):
            heapq.heappop(dl)
        bo = self._backoffs
        while bo and (bo[0][1] not in self.pending or self.pending[bo[0][1]].not_before != bo[0][0]):
            heapq.heappop(bo)
        cands = [h[0][0] for h in (dl, bo) if h]
        if self._changed and self.pending:
            cands.append(self._now)
        return min(cands) if cands else None

    def export_state(self) -> dict[str, Any]:
        """FIFO keeps no state beyond the jobs (the store has those)."""
        return {"version": 1}

    def import_state(self, state: dict[str, Any]) -> None:
        """Nothing to load (see ``export_state``)."""


def _replace(job: JobRequest, **changes: Any) -> JobRequest:
    from dataclasses import replace

    return replace(job, **changes)
