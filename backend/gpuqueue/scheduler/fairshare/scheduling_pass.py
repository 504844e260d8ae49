"""One scheduling pass over one pool: walk the order, start what fits, reserve GPUs for the
first job that does not, and backfill around the reservation.

The order is tiers (high, boosted, medium, boosted, low); within a tier first the aged jobs,
oldest first, then users by share key (WFQ: a start re-keys its user), each user's jobs oldest
first. After the reservation the pass visits only the queue keys that may still start
(``fit_keys``), and stops when none may, or after ``backfill_depth`` blocked jobs.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Optional

from ..base import Decision, JobRequest, Placement
from . import reservations
from .records import (
    INF,
    N_TIERS,
    PENDING,
    AgedEntry,
    BehindReservation,
    Job,
    QueueKey,
    WaitingForGpus,
    class_key,
)
from .reservations import Reservation

if TYPE_CHECKING:  # pragma: no cover
    from .pool import Pool
    from .policy import FairShareScheduler

STARTED, BLOCKED, OVER_QUOTA = "started", "blocked", "user"


class SchedulingPass:
    """The state of one pass over one pool; ``run`` does the pass."""

    def __init__(self, policy: "FairShareScheduler", pool: "Pool", now: float, out: list[Decision]):
        self.policy = policy
        self.pool = pool
        self.now = now
        self.out = out
        self.reservation: Optional[Reservation] = None
        self.budget = policy.knobs.backfill_depth
        self.fail_min = INF  # smallest one-node request that failed without a bounded end
        self.blocked_users: set[str] = set()
        # one-node "does not fit now" memo (free GPUs and spare only shrink within a pass):
        self.nofit_all = INF  # smallest size that fit on no node at all
        self.nofit_strict = INF  # smallest size that fit on no node outside the reserved spare
        self._fit_signature: tuple = ()  # the inputs fit_keys last answered for, and its answer
        self._fits: frozenset[QueueKey] = frozenset()

    # ---------------------------------------------------------------------------- the pass
    def run(self) -> None:
        """Start what fits in order, reserve for the first blocked job, then try preemption."""
        pool = self.pool
        pool.reserved_for, pool.shadow = None, INF
        queue = pool.queue
        if not queue.classes or not pool.nodes.nodes:
            return
        pool.pass_no += 1
        for t in range(N_TIERS):
            if (queue.aged_heaps[t] and self.scan_aged(t)) or (queue.user_heaps[t] and self.scan_users(t)):
                break
        res = self.reservation
        if res is not None:
            pool.reserved_for = res.job.request.id
            if res.ready:
                pool.shadow = res.shadow
            self.policy.try_preempt(pool, res.job, self.now, self.out)

    def _shadow(self) -> float:
        res = self.reservation
        return INF if res is None else res.shadow

    def _bounded(self) -> bool:
        """Whether the reservation is planned with a known shadow time."""
        res = self.reservation
        return res is not None and res.ready and res.shadow < INF

    def fit_keys(self) -> Optional[frozenset[QueueKey]]:
        """The queue keys of pending jobs that may still start in this pass; None before the
        reservation (every job is tried, in order). After it, a key is out when every class of
        pending job under it is too big for the free GPUs, or the pass already saw a job of that
        size or smaller fail to fit: anywhere, or outside the reserved GPUs when it would not end
        before the shadow time. Free GPUs only shrink within a pass, so this is exact. Memoized
        on its inputs."""
        res = self.reservation
        if res is None:
            return None
        pool, nodes = self.pool, self.pool.nodes
        classes = pool.queue.classes
        sig = (nodes.free, self.nofit_all, self.nofit_strict, self.fail_min, res.shadow, res.ready,
               bool(res.spare), len(classes))
        if sig == self._fit_signature:
            return self._fits
        self._fit_signature = sig
        free, shadow, now = nodes.free, res.shadow, self.now
        unbounded = not res.ready or shadow == INF
        fits: set[QueueKey] = set()
        for g, n_nodes, limit in classes:
            key = class_key((g, n_nodes, limit))
            if key in fits or g > free or g >= self.nofit_all:
                continue
            if n_nodes > 1:  # needs `n_nodes` idle nodes: at least that many with `per` GPUs free
                if nodes.idle_count(g // n_nodes) >= n_nodes:
                    fits.add(key)
                continue
            if unbounded and g >= self.fail_min:
                continue
            if res.spare and g >= self.nofit_strict and not (shadow < INF and now + limit <= shadow):
                continue
            fits.add(key)
        self._fits = frozenset(fits)
        return self._fits

    def scan_aged(self, t: int) -> bool:
        """Aged jobs of tier ``t`` (waited past ``oldest_first_after``), oldest first (a merge
        of the per-key heaps). True when the pass is over (budget spent or nothing can fit)."""
        heaps = self.pool.queue.aged_heaps[t]
        if not heaps:
            return False
        jobs = self.policy.jobs
        heappop = heapq.heappop
        kept: list[tuple[list[AgedEntry], AgedEntry]] = []
        stop = False
        while True:
            allowed = self.fit_keys()
            if allowed is not None and (self.budget <= 0 or not allowed):
                stop = True
                break
            best: Optional[AgedEntry] = None
            best_heap: list[AgedEntry] = []
            for key, h in heaps.items():
                if allowed is not None and key not in allowed:
                    continue
                while h:
                    e = h[0]
                    j = jobs.get(e.job_id)
                    if j is None or j.state != PENDING or j.queue_version != e.queue_version:
                        heappop(h)
                        continue
                    if best is None or e < best:
                        best, best_heap = e, h
                    break
            if best is None:
                break
            heappop(best_heap)
            if self.consider(jobs[best.job_id]) != STARTED:
                kept.append((best_heap, best))
        for h, e in kept:
            heapq.heappush(h, e)
        for key in [key for key, h in heaps.items() if not h]:
            del heaps[key]
        return stop

    def scan_users(self, t: int) -> bool:
        """The other jobs of tier ``t``: users by share key (a merge of the per-key user heaps),
        each user's jobs oldest first. True when the pass is over."""
        queue = self.pool.queue
        heaps = queue.user_heaps[t]
        if not heaps:
            return False
        users, jobs = self.policy.ledger.users, self.policy.jobs
        lists, in_heap = queue.lists, queue.in_heap
        heappop = heapq.heappop
        blocked = self.blocked_users
        passed: dict[tuple[str, QueueKey], int] = {}  # (user, key) -> jobs of that list passed over
        popped: list[tuple[str, QueueKey]] = []
        stop = False
        while True:
            allowed = self.fit_keys()
            if allowed is not None and (self.budget <= 0 or not allowed):
                stop = True
                break
            best: Optional[tuple[float, str]] = None
            for key, h in heaps.items():
                if allowed is not None and key not in allowed:
                    continue
                tk = (t, key)
                while h:
                    share, name, version = h[0]
                    u = users[name]
                    marks = in_heap[name]
                    if version != u.version or tk not in marks:
                        heappop(h)
                        continue
                    lst = lists[name].get(tk)
                    if not lst or passed.get((name, key), 0) >= len(lst) or name in blocked:
                        heappop(h)
                        marks.discard(tk)
                        if lst:
                            popped.append((name, key))
                        continue
                    if best is None or (share, name) < best:
                        best = (share, name)
                    break
            if best is None:
                break
            name = best[1]
            mine = lists[name]
            first: Optional[tuple[float, int, str]] = None
            first_key: QueueKey = (0, False)
            for key in heaps:  # the user's oldest job among the keys still in play
                if allowed is not None and key not in allowed:
                    continue
                lst = mine.get((t, key))
                if lst:
                    i = passed.get((name, key), 0)
                    if i < len(lst) and (first is None or lst[i] < first):
                        first, first_key = lst[i], key
            assert first is not None
            r = self.consider(jobs[first[2]])
            if r == BLOCKED:
                passed[(name, first_key)] = passed.get((name, first_key), 0) + 1
            elif r == OVER_QUOTA:
                blocked.add(name)
            # STARTED: the charge bumped the user's version and pushed its entries again
        for name, key in popped:
            if lists[name].get((t, key)):
                queue.push_user(users[name], t, key)
        for key in [key for key, h in heaps.items() if not h]:
            del heaps[key]
        return stop

    # ------------------------------------------------------------------------- one job
    def consider(self, j: Job) -> str:
        """Start the job if it fits without delaying the reservation; else it is blocked (the
        first blocked job gets the reservation) or over quota. Returns which."""
        pool, policy = self.pool, self.policy
        req = j.request
        j.seen_in_pass = pool.pass_no
        q = policy.quota_reason(pool, req)
        if q is not None:
            j.reason, j.reason_message = q
            return OVER_QUOTA
        nodes = pool.nodes
        placement = None
        res = self.reservation
        if req.gpus <= nodes.free and not (req.nodes <= 1 and req.gpus >= self.fail_min
                                           and not self._bounded()):
            placement = self.place(req)
            if placement is None and req.nodes <= 1 and res is not None:
                limit = policy.limit(req)
                if limit is None or not self._bounded() or self.now + limit > res.shadow:
                    self.fail_min = min(self.fail_min, req.gpus)
        if placement is not None:
            policy.start(j, placement, self.now, self.out)
            return STARTED
        if res is None:
            self.reservation = Reservation(j)
            j.reason = "resources"
            j.reason_message = (f"waiting for {req.gpus} GPUs in pool {pool.name!r} "
                                f"({nodes.free}/{nodes.total} free); GPUs are reserved for it")
        else:
            self.budget -= 1
            reserved = res.job.request
            if req.gpus <= nodes.free:
                j.reason = "reservation"
                j.reason_message = BehindReservation(reserved.id)
            else:
                j.reason = "resources" if reserved.priority.rank >= req.priority.rank else "priority"
                j.reason_message = WaitingForGpus(req.gpus, pool.name, nodes.free, nodes.total, reserved.id)
        return BLOCKED

    def place(self, req: JobRequest) -> Optional[Placement]:
        """Best-fit gang placement that leaves the reservation (if any) undisturbed."""
        g = req.gpus
        nodes = self.pool.nodes
        spare: dict[str, int] = {}
        fits_before = True
        res = self.reservation
        if res is not None:
            if not res.ready:
                policy = self.policy
                reservations.plan(res, nodes, policy.node_index, self.pool.timed_running, self.now)
            spare = res.spare
            limit = self.policy.limit(req)
            end = INF if limit is None else self.now + limit
            fits_before = res.shadow < INF and end <= res.shadow
        if req.nodes > 1:
            return nodes.idle_nodes(g, req.nodes, spare, fits_before)
        check = not fits_before and bool(spare)
        if g >= self.nofit_all or (check and g >= self.nofit_strict):
            return None  # a smaller or equal request already failed this pass
        placement = nodes.best_fit(g, spare, check)
        if placement is None:
            if check:
                self.nofit_strict = min(self.nofit_strict, g)
            else:
                self.nofit_all = min(self.nofit_all, g)
        return placement
