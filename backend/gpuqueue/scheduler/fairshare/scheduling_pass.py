"""One scheduling pass over one pool.

1. **Starved jobs** (waited past the pool's ``starvation_timeout``), oldest first, up to
   ``max_reservations`` of them: each starts if it fits, else gets a reservation on nodes no
   earlier reservation holds (see ``reservations``).
2. **Fair order**: tiers (high, boosted, medium, boosted, low); within a tier users by share key
   (WFQ: a start re-keys its user), each user's jobs oldest first. A job starts where it fits
   without delaying any reservation; the first that does not fit gets a reservation too (EASY
   backfill).
3. **Preemption** for the reservations, starved ones first, where the pool allows it.

After the first blocked job the pass visits only the queue keys that may still start
(``fit_keys``), and stops when none may, or after ``backfill_depth`` blocked jobs.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Optional

from ..base import Decision, Placement
from ..cluster import NodeState
from . import reservations
from .records import (
    INF,
    N_TIERS,
    PENDING,
    AgeEntry,
    BehindReservation,
    Job,
    Reserved,
    Starved,
    QueueKey,
    WaitingForGpus,
)
from .reservations import Claims, Reservation

if TYPE_CHECKING:  # pragma: no cover
    from .pool import Pool
    from .policy import FairShareScheduler

STARTED, BLOCKED, OVER_QUOTA = "started", "blocked", "user"
NO_GPUS = (0, 0, 0)


class StarvedCache(NamedTuple):
    """The reservations a pass made for starved jobs, and what they depended on."""

    freed_epoch: int
    starved_epoch: int
    touches: int
    min_need: float  # the fewest GPUs on a node one of the starved jobs it saw needs (0: quota)
    # the reservations, in order, each with its spare GPUs then (a pass uses spare GPUs up, so
    # a pass that holds them again starts from these; nothing else of a reservation changes)
    reservations: list[tuple[Reservation, dict[str, int]]]
    claims: tuple  # the pass's ``Claims`` after them (``Claims.state``)
    min_shadow: float  # the earliest of their shadow times (INF: none)
    nodes: tuple[str, ...]  # all their nodes


class FitMemo:
    """The smallest one-node size that found no node in this pass, per *view* of the reserved
    nodes. A job ending at ``end`` may use the reserved nodes whose shadow time is ``>= end``
    (plus spare GPUs elsewhere); with the finite shadows sorted, its view is how many of them
    it ends before, so views are nested: a failure with one view is a failure with every
    narrower one. A preemptible job that may borrow starved jobs' GPUs sees more than one that
    may not. Reset when a reservation is added (the views change)."""

    def __init__(self) -> None:
        self.claims_version = -1
        self.shadows: list[float] = []  # finite shadow times of the reservations, ascending
        self.nofit: dict[bool, list[float]] = {}
        self.changes = 0  # bumps on every update (fit_keys caches on it)

    def follow(self, claims: Claims) -> None:
        """Start over if reservations were added since the memo was last used."""
        if claims.version != self.claims_version:
            self.claims_version = claims.version
            self.shadows = sorted(r.shadow for r in claims.all if r.spare and r.shadow < INF)
            self.nofit = {False: [INF] * (len(self.shadows) + 1), True: [INF] * (len(self.shadows) + 1)}
            self.changes += 1

    def view(self, end: float) -> int:
        """How many reservations a job ending at ``end`` ends before."""
        return len(self.shadows) - bisect_left(self.shadows, end)

    def fails(self, gpus: int, borrows: bool, view: int) -> bool:
        """Whether a job of that size is known not to fit with that view."""
        return gpus >= self.nofit[borrows][view]

    def failed(self, gpus: int, borrows: bool, view: int) -> None:
        """A job of that size found no node with that view: nor will it with a narrower one."""
        for b in ((True, False) if borrows else (False,)):
            row = self.nofit[b]
            for k in range(view + 1):
                if gpus < row[k]:
                    row[k] = gpus
        self.changes += 1


class SchedulingPass:
    """The state of one pass over one pool; ``run`` does the pass."""

    def __init__(self, policy: "FairShareScheduler", pool: "Pool", now: float, out: list[Decision]):
        self.policy = policy
        self.pool = pool
        self.now = now
        self.out = out
        self.claims = Claims()
        self.reserved: dict[str, Reservation] = {}  # job id -> its reservation in this pass
        self.first_blocked: Optional[Reservation] = None  # the fair order's EASY reservation
        self.drains = 0  # nodes drained blind for reservations (the fair order's first aside)
        self.budget = policy.knobs.backfill_depth
        self.blocked_users: set[str] = set()
        # one-node "does not fit now" memos (free GPUs and spare only shrink within a pass):
        self.nofit_all = INF  # smallest size that fit on no node, no node reserved
        self.memo = FitMemo()  # ... per view of the reserved nodes
        # a preemptible job may borrow GPUs set aside for a starved job (it will preempt it)
        self.lending = pool.config.allow_preemption and policy.knobs.preemption_budget > 0
        self._fit_signature: tuple = (None,) * 5  # the inputs fit_keys last answered for, and its answer
        self._fits: frozenset[QueueKey] = frozenset()
        self._class_views: list[tuple] = []  # (GPUs, key, nodes, memo row, view) of classes still in
        self._multi = False  # some class needs several nodes

    # ---------------------------------------------------------------------------- the pass
    def run(self) -> None:
        """Starved jobs, then the fair order, then preemption (see the module docstring)."""
        pool = self.pool
        pool.reservations = {}
        queue = pool.queue
        if not queue or not pool.nodes.nodes:
            return
        pool.pass_no += 1
        if self.policy.knobs.reservations:
            self.serve_starved()
        for t in range(N_TIERS):
            if queue.user_heaps[t] and self.scan_users(t):
                break
        for res in self.reserved.values():
            pool.reservations[res.job.request.id] = res.shadow
        # preemption: for the first starved job (the one the wait bound rests on) and the fair
        # order's first blocked job
        first = True
        for res in self.reserved.values():
            if res is self.first_blocked or first:
                self.policy.try_preempt(pool, res, self.claims, self.now, self.out)
            first = first and not res.starved

    def serve_starved(self) -> None:
        """The ``max_reservations`` oldest starved jobs by *credited age* (submit time less
        ``starved_priority_credit`` per priority step above low): start the ones that fit,
        reserve for the others (over-quota ones are passed over). The other starved jobs wait
        their turn among these (the wait bound rests on the oldest one); fair share orders the
        rest. A merge of the age heaps (one per priority and starvation time)."""
        pool, policy = self.pool, self.policy
        heaps = pool.queue.by_age
        if not heaps:
            return
        if self.reuse_starved():
            return
        jobs = policy.jobs
        limit = policy.knobs.max_reservations
        heappop = heapq.heappop
        kept: list[tuple[list[AgeEntry], AgeEntry]] = []
        looked = 0
        min_need = INF
        # per heap, its top as (credited age, seq, heap) if starved, else None; only the heap
        # popped from is looked at again (considering a job changes no other job's state)
        tops: list[Optional[tuple[float, int, list[AgeEntry]]]] = []
        for (rank, after), heap in heaps.items():
            tops.append(self._starved_top(heap, rank, after))
        ranks = list(heaps)
        while looked < limit:
            best: Optional[tuple[float, int, list[AgeEntry]]] = None
            at = -1
            for i, top in enumerate(tops):
                if top is not None and (best is None or top[:2] < best[:2]):
                    best, at = top, i
            if best is None:
                break
            heap = best[2]
            e = heappop(heap)
            tops[at] = self._starved_top(heap, *ranks[at])
            looked += 1
            j = jobs[e.job_id]
            r = self.consider(j, starved=True)
            if r != STARTED:
                kept.append((heap, e))
                # the fewest free GPUs on a node that could let one of them start
                need = 0 if r == OVER_QUOTA else j.request.gpus // max(1, j.request.nodes)
                min_need = min(min_need, need)
        for heap, e in kept:
            heapq.heappush(heap, e)
        index = policy.node_index
        made = self.claims.all
        pool.starved_cache = StarvedCache(
            pool.freed_epoch, pool.starved_epoch, index.touches, min_need,
            [(r, r.spare.copy()) for r in made], self.claims.state(),
            min([r.shadow for r in made], default=INF), tuple([n for r in made for n in r.nodes]))

    def _starved_top(self, heap: list[AgeEntry], rank: int, after: float) -> Optional[tuple[float, int, list[AgeEntry]]]:
        """The heap's oldest pending job as (credited age, seq, heap) if it is starved, else
        None (dropping stale entries on the way)."""
        jobs = self.policy.jobs
        while heap:
            e = heap[0]
            j = jobs.get(e.job_id)
            if j is None or j.state != PENDING or j.queue_version != e.queue_version:
                heapq.heappop(heap)
                continue
            if e.submit_time + after <= self.now:
                return (e.submit_time - (2 - rank) * self.policy.knobs.starved_priority_credit, e.seq, heap)
            return None
        return None

    def reuse_starved(self) -> bool:
        """Hold the last pass's reservations for starved jobs again, if nothing they depend on
        changed: none of them can start now (no GPUs were freed, or no node has as many free as
        the smallest of them needs), no job started or stopped starving, none of their nodes
        changed, no shadow time passed. True if done."""
        pool = self.pool
        cache = pool.starved_cache
        if cache is None or cache.starved_epoch != pool.starved_epoch:
            return False
        if cache.freed_epoch != pool.freed_epoch and pool.nodes.max_free() >= cache.min_need:
            return False  # GPUs were freed: one of them may start now
        if cache.min_shadow < self.now:
            return False
        at = self.policy.node_index.touched_at
        touches = cache.touches
        for n in cache.nodes:
            if at.get(n, 0) > touches:
                return False
        # the same reservations again (only their spare GPUs changed since), and the claims
        # they made (as adding them one by one would)
        reserved, pass_no = self.reserved, pool.pass_no
        for res, spare in cache.reservations:
            res.spare = spare.copy()
            job = res.job
            reserved[job.request.id] = res
            job.seen_in_pass = pass_no
        self.claims.restore(cache.claims)
        return True

    def fit_keys(self) -> Optional[frozenset[QueueKey]]:
        """The queue keys of pending jobs that may still start in this pass; None before the
        first blocked job of the fair order (every job is tried, in order). After it, a key is
        out when every class of pending job under it is too big for the free GPUs, or the pass
        already saw a job of that size or smaller fail to fit with the same or a wider view of
        the reserved nodes (see ``FitMemo``). Free GPUs only shrink within a pass, so this is
        exact. Memoized on its inputs; and while the classes and views stay the same, a class
        that is out stays out (free GPUs, ``nofit_all`` and the memo only shrink), so only the
        classes still in are looked at again, and only the biggest when the memo is unchanged."""
        if self.first_blocked is None:
            return None
        nodes = self.pool.nodes
        queue = self.pool.queue
        claims, memo = self.claims, self.memo
        if claims.version != memo.claims_version:
            memo.follow(claims)
        sig = (nodes.free, self.nofit_all, memo.changes, queue.shortest_version, memo.claims_version)
        last = self._fit_signature
        if sig == last:
            return self._fits
        if sig[3] != last[3] or sig[4] != last[4]:  # classes or views changed: see each key again
            lending = self.lending and claims.starved > 0
            reserved = bool(claims.by_node)
            now = self.now
            nofit = memo.nofit
            view_of: dict[float, int] = {}  # time limit -> view (classes share a few limits)
            built: list[tuple] = []
            multi = False
            for (key, n_nodes), limit in queue.shortest.items():
                view = view_of.get(limit)
                if view is None:
                    view = view_of[limit] = memo.view(now + limit) if memo.shadows else 0
                built.append((key[0], key, n_nodes, nofit[lending and key[2]] if reserved else None, view))
                multi = multi or n_nodes > 1
            built.sort(key=itemgetter(0))  # by GPUs: free GPUs and nofit_all cut off the biggest
            self._class_views, self._multi = built, multi
            full = True
        else:  # a new failure in the memo (or multi-node classes, which need idle nodes) needs a
            # look at each class; fewer free GPUs or a lower nofit_all only drop the biggest
            full = sig[2] != last[2] or self._multi
        self._fit_signature = sig
        free, nofit_all = nodes.free, self.nofit_all
        views = self._class_views
        if not full:
            bound = min(free + 1, nofit_all)
            if not views or views[-1][0] < bound:
                return self._fits
            while views and views[-1][0] >= bound:
                views.pop()
            fits = {cv[1] for cv in views}
        else:
            still: list[tuple] = []
            for cv in views:
                g, key, n_nodes, row, view = cv
                if g > free or g >= nofit_all:
                    continue
                if n_nodes > 1:  # needs `n_nodes` idle nodes: at least that many with `per` GPUs free
                    if nodes.idle_count(g // n_nodes) < n_nodes:
                        continue
                elif row is not None and g >= row[view]:
                    continue
                still.append(cv)
            self._class_views = still
            fits = {cv[1] for cv in still}
        if fits != self._fits:  # the same object while nothing changes (scan_users caches on it)
            self._fits = frozenset(fits)
        return self._fits

    def scan_users(self, t: int) -> bool:
        """The jobs of tier ``t``: users by share key (a merge of the per-key user heaps),
        each user's jobs oldest first. True when the pass is over."""
        queue = self.pool.queue
        heaps = queue.user_heaps[t]
        if not heaps:
            return False
        users, jobs = self.policy.ledger.users, self.policy.jobs
        lists, in_heap = queue.lists, queue.in_heap
        heappop = heapq.heappop
        refresh_top = queue.refresh_top
        blocked = self.blocked_users
        passed: dict[tuple[str, QueueKey], int] = {}  # (user, key) -> jobs of that list passed over
        popped: list[tuple[str, QueueKey]] = []
        # key -> its heap's top (share key, user, version) as last seen (None: empty; False or
        # absent: to be seen again, because its user changed or was the one just considered)
        tops: dict[QueueKey, Any] = {}
        # the keys in play: ``live`` those whose top is known (not empty), ``todo`` the others
        live: dict[QueueKey, tuple] = {}
        todo: list[QueueKey] = []
        stop = False
        # a start changes only its user's share key, unless fair share is by group
        by_group = self.policy.ledger.hierarchical
        seen: Optional[frozenset[QueueKey]] = frozenset()
        consider = self.consider
        fit_keys = self.fit_keys
        first_pass = True
        # the user at the top of the keys in play (None: to be found again, after ``live`` changed)
        name: Optional[str] = None
        while True:
            allowed = fit_keys()
            if allowed is not None and (self.budget <= 0 or not allowed):
                stop = True
                break
            if allowed is not seen and seen is not None and allowed is not None and not first_pass \
                    and allowed <= seen:  # fewer keys in play: drop the others
                for key in seen - allowed:
                    if key in live:
                        del live[key]
                    elif key in todo:
                        todo.remove(key)
                seen = allowed
                name = None
            elif allowed is not seen or first_pass:  # the keys still in play
                seen = allowed
                first_pass = False
                name = None
                live = {}
                todo = []
                for key in heaps:
                    if allowed is None or key in allowed:
                        top = tops.get(key, False)
                        if top is False:
                            todo.append(key)
                        elif top is not None:
                            live[key] = top
            if todo:
                for key in todo:
                    h = heaps[key]
                    top = None
                    tk = (t, key)
                    while h:
                        share, name, version = h[0]
                        u = users[name]
                        marks = in_heap[name]
                        if version != u.version or marks.get(tk) != version:
                            refresh_top(h, u, t, key, version)  # pushed again with its new key
                            continue
                        lst = lists[name][t].get(key)
                        if not lst or name in blocked or passed and passed.get((name, key), 0) >= len(lst):
                            heappop(h)
                            del marks[tk]
                            if lst:
                                popped.append((name, key))
                            continue
                        top = h[0]
                        break
                    tops[key] = top
                    if top is not None:
                        live[key] = top
                todo = []
                name = None
            if not live:
                break
            if name is None:
                name = min(live.values())[1]
            mine = lists[name][t]
            first: Optional[tuple[float, int, str]] = None
            first_key: QueueKey = (0, False, False)
            for key, lst in mine.items():  # its oldest job among the keys in play
                if allowed is not None and key not in allowed:
                    continue
                i = passed.get((name, key), 0) if passed else 0
                if i < len(lst) and (first is None or lst[i] < first):
                    first, first_key = lst[i], key
            assert first is not None
            r = consider(jobs[first[2]])
            its_keys: Iterable[QueueKey]  # the keys whose top may have changed
            if r == BLOCKED:
                # one more job of that list passed over: only that key's top may change (the
                # user's version, its other lists and what was passed there are as they were)
                n_passed = passed[(name, first_key)] = passed.get((name, first_key), 0) + 1
                if n_passed < len(mine[first_key]):
                    continue  # jobs are left to try there: the same tops, the same user next
                its_keys = (first_key,)
            elif r == OVER_QUOTA:
                blocked.add(name)
                its_keys = list(mine)
            else:  # STARTED: the charge bumped the user's version: its entries are pushed
                # again lazily, under any key it had jobs (the start may have emptied first_key)
                its_keys = list(mine)
                if first_key not in mine:
                    its_keys.append(first_key)
            for key in its_keys:
                top = tops.get(key)
                if top and top[1] == name:
                    tops[key] = False
                    if key in live:
                        del live[key]
                        todo.append(key)
            if r == STARTED and by_group:  # ... and its group's members' versions
                for key, top in tops.items():
                    if top and users[top[1]].version != top[2]:
                        tops[key] = False
                        if key in live:
                            del live[key]
                            todo.append(key)
            name = None
        for name, key in popped:
            if key in lists[name][t]:
                queue.push_user(users[name], t, key)
        for key in [key for key, h in heaps.items() if not h]:
            del heaps[key]
        return stop

    # ------------------------------------------------------------------------- one job
    def consider(self, j: Job, starved: bool = False) -> str:
        """Start the job if it fits without delaying a reservation; else it is blocked (a
        starved job, and the first blocked one of the fair order, get a reservation) or over
        quota. Returns which."""
        req = j.request
        if req.id in self.reserved:
            return BLOCKED  # reserved for as a starved job earlier in this pass
        pool, policy = self.pool, self.policy
        j.seen_in_pass = pool.pass_no
        free = pool.quota_free.get(req.user)
        if free is None:
            free = pool.quota_free[req.user] = self.quota_free(req.user)
        if not free:
            q = policy.quota_reason(pool, req)
            if q is not None:
                j.reason, j.reason_message = q
                return OVER_QUOTA
        nodes = pool.nodes
        placement, borrowed = self.place(j) if req.gpus <= nodes.free else (None, False)
        if placement is not None:
            policy.start(j, placement, self.now, self.out)
            j.borrowed = borrowed
            return STARTED
        if starved:
            if req.gpus <= req.nodes:  # one GPU a node: it takes the next GPU that frees up, as
                j.reason = "starved"  # starved jobs go first; nothing to set aside
                j.reason_message = Starved(pool.name, nodes.free, nodes.total, False)
                return BLOCKED
            res = Reservation(j, starved=True)
            if not self.reserve(res):
                return BLOCKED  # its turn to drain a node comes when an earlier drain ends
            self.reserved[req.id] = res
            j.reason = "starved"
            j.reason_message = Starved(pool.name, nodes.free, nodes.total, True)
            return BLOCKED
        if self.first_blocked is None:
            res = self.first_blocked = self.reserved[req.id] = Reservation(j, starved=False)
            if policy.knobs.reservations:
                self.reserve(res)
            else:
                res.ready = True  # nothing is set aside: backfill is not held back
            j.reason = "resources"
            j.reason_message = Reserved(req.gpus, pool.name, nodes.free, nodes.total)
            return BLOCKED
        self.budget -= 1
        reserved = self.claims.all[0].job.request if self.claims.all else self.first_blocked.job.request
        # the reason of a job blocked pass after pass rarely changes: keep the message if equal
        m = j.reason_message
        if req.gpus <= nodes.free:
            j.reason = "reservation"
            if type(m) is not BehindReservation or m[0] != reserved.id:
                j.reason_message = BehindReservation(reserved.id)
        else:
            j.reason = "resources" if reserved.priority.rank >= req.priority.rank else "priority"
            if type(m) is not WaitingForGpus or m != (req.gpus, pool.name, nodes.free, nodes.total, reserved.id):
                j.reason_message = WaitingForGpus(req.gpus, pool.name, nodes.free, nodes.total, reserved.id)
        return BLOCKED

    def quota_free(self, user: str) -> bool:
        """Whether no quota can ever hold back the user's jobs in this pool (see
        ``quotas.over_quota``): no ``max_running`` or ``max_gpus`` of its own or of a configured
        group, no ``max_gpus_per_user`` of the pool. Limits come from the config, which a
        policy keeps for life, so ``Pool.quota_free`` keeps the answer (until the user moves
        to another group: ``FairShareScheduler._regroup``)."""
        u = self.policy.ledger.users[user]
        lim = u.limits
        if lim.max_running is not None or lim.max_gpus is not None:
            return False
        if self.pool.config.max_gpus_per_user is not None:
            return False
        g = u.group
        gc = self.policy.config.groups.get(g.name) if g is not None and g.configured else None
        return gc is None or (gc.max_running is None and gc.max_gpus is None)

    def reserve(self, res: Reservation) -> bool:
        """Plan a reservation and hold its nodes: the nodes the job held in the last pass if it
        still can (a job keeps the nodes it drains: draining others would start over; planning
        again costs more), else the best nodes. A reservation other than the fair order's first
        is not made (False) when it would drain nodes with no known end time beyond the pool's
        ``drain_share`` of such nodes."""
        pool, index = self.pool, self.policy.node_index
        job_id = res.job.request.id
        before = pool.held.get(job_id)
        kept = None if before is None else reservations.keep(res, before, pool.nodes, index, self.now, self.claims)
        if kept is None:
            reservations.plan(res, pool.nodes, index, pool.timed_running, self.now, self.claims)
            kept = reservations.held(res, index)
        if res is not self.first_blocked and reservations.drains_blind(res, pool.nodes):
            allowed = max(1, int(len(pool.nodes.nodes) * self.policy.knobs.drain_share))
            if self.drains + len(res.spare) > allowed:
                return False
            self.drains += len(res.spare)
        self.claims.add(res)
        if kept is not before:
            pool.held[job_id] = kept
        return True

    def apart(self, j: Job) -> Optional[Callable[[NodeState], bool]]:
        """For a job that preemption may stop: whether a node runs other work (that preemption
        cannot stop); for other jobs: whether it runs preemptible work. Keeping the two apart
        leaves nodes that preemption can make whole for a waiting big job."""
        if not self.pool.config.allow_preemption:
            return None
        index = self.policy.node_index
        held, stopping = index.preemptible_gpus, index.stopping_gpus
        if j.request.preemptible or self.pool.config.preemptible:
            return lambda n: n.gpus - len(n.free) - stopping.get(n.name, 0) > sum(held.get(n.name, NO_GPUS))
        return lambda n: sum(held.get(n.name, NO_GPUS)) > 0

    def place(self, j: Job) -> tuple[Optional[Placement], bool]:
        """Best-fit gang placement that leaves every reservation undisturbed: a reserved node
        only for a job that ends before that reservation's start, in its spare GPUs, or (a
        preemptible job, where the pool allows preemption) on GPUs set aside for a starved job,
        which may then preempt it. Returns the placement (None if none) and whether it borrows."""
        req = j.request
        g = req.gpus
        nodes = self.pool.nodes
        claims = self.claims
        end = INF
        lends = False
        any_claims = bool(claims.by_node)
        if any_claims:
            limit = j.limit
            if limit is not None:
                end = self.now + limit
            lends = (self.lending and claims.starved > 0 and (req.preemptible or self.pool.config.preemptible)
                     and j.preemptions < self.policy.knobs.max_preemptions_per_job)
        if req.nodes > 1:
            return nodes.idle_nodes(g, req.nodes, claims.by_node, end, lends)
        if g >= self.nofit_all:
            return None, False  # a smaller or equal request already failed with no node reserved
        if any_claims:
            memo = self.memo
            if claims.version != memo.claims_version:
                memo.follow(claims)
            shadows = memo.shadows  # memo.view(end) and memo.fails(g, lends, view), inline
            view = len(shadows) - bisect_left(shadows, end) if shadows else 0
            if g >= memo.nofit[lends][view]:
                return None, False  # ... or with the same or a wider view of the reserved nodes
        placement, borrowed = nodes.best_fit(g, claims.by_node, end, lends, self.apart(j))
        if placement is None:
            if not any_claims:
                self.nofit_all = min(self.nofit_all, g)
            else:
                self.memo.failed(g, lends, view)
        return placement, borrowed
