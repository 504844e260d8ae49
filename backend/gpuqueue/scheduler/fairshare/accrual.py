"""When a pending job's starvation clock starts (``accrue_limit``, Slurm's ``MaxJobsAccrue``).

A job starves after waiting ``starve_after`` seconds (see ``ordering``), counted from its
*accrual start*, ``Job.accrue_at``. With ``accrue_limit = 0`` (off) that is its submit time.
With ``accrue_limit = K > 0`` only the first ``K`` pending jobs of a user in a pool (by
submission, oldest first; with ``accrue_by_size`` per user and job size) accrue age: a later
one's clock starts when an earlier one leaves the queue (starts or is cancelled) and it moves
into the first ``K``. Once started, a job's clock keeps running until it starts, and it keeps
its accrual start when it is preempted or retried (it may then be one of more than ``K``
accruing jobs for a while; no further job starts accruing until fewer than ``K`` do).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from typing import Hashable

from .records import INF, Job


class Accrual:
    """The accruing jobs of one pool, counted per user (or per user and size), and the pending
    jobs that do not accrue yet, oldest first."""

    def __init__(self, limit: int, by_size: bool) -> None:
        self.limit = limit
        self.by_size = by_size
        self.count: dict[Hashable, int] = {}
        self.held: dict[Hashable, list[tuple[float, int, str]]] = {}

    def key(self, job: Job) -> Hashable:
        """Whose count the job is in: its user's (and, with ``accrue_by_size``, its size's)."""
        req = job.request
        return (req.user, req.gpus) if self.by_size else req.user

    def enter(self, job: Job) -> None:
        """The job joins the pool's pending queue: set ``job.accrue_at`` (INF: not yet)."""
        if self.limit <= 0:
            job.accrue_at = job.request.submit_time
            return
        k = self.key(job)
        n = self.count.get(k, 0)
        if job.accrue_at < INF:  # accrued before (preempted, lost or retried): keeps its clock
            self.count[k] = n + 1
        elif n < self.limit:
            self.count[k] = n + 1
            job.accrue_at = job.request.submit_time  # in the first K since it was submitted
        else:
            insort(self.held.setdefault(k, []), job.order_key)

    def leave(self, job: Job) -> list[str]:
        """The job leaves the pending queue (starts or is cancelled): the ids of the jobs that
        start accruing now, oldest first (the caller sets their ``accrue_at``)."""
        if self.limit <= 0:
            return []
        k = self.key(job)
        if job.accrue_at == INF:
            lst = self.held.get(k)
            if lst:
                key = job.order_key
                i = bisect_left(lst, key)
                if i < len(lst) and lst[i] == key:
                    del lst[i]
            return []
        n = self.count[k] - 1
        promoted: list[str] = []
        lst = self.held.get(k)
        while lst and n < self.limit:
            promoted.append(lst.pop(0)[2])
            n += 1
        if lst is not None and not lst:
            del self.held[k]
        if n:
            self.count[k] = n
        else:
            self.count.pop(k, None)
        return promoted
