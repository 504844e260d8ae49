"""The gpuqueue policy: priority tiers inside weighted fair queuing between users.

Pure and deterministic: no I/O, no wall clock, no randomness (retry jitter is a hash of the
job id and attempt). The exact formula and every default are in ``docs/scheduling.md``;
in short, a pool's pending jobs are ordered by

    (tier, aged-first, user share key, submit time, submission sequence)

where ``tier = 0`` for high, ``2`` for medium, ``4`` for low, lowered by one step per
``starvation_timeout`` waited (at most ``starvation_boost_cap`` steps, never to 0 unless high),
``share key = decayed GPU-hours charged to the user / user weight``, and a job that waited past
``oldest_first_after`` (7 days) is *aged*: it goes before the rest of its tier, oldest first. GPU-hours are charged
at admission, ``charge_ahead`` seconds of the job's GPUs at a time, and trued up at the end.
The first job that does not fit gets a reservation (EASY backfill); jobs behind it start only
where they cannot delay it. In pools that allow it, the reserved job may preempt preemptible
work of strictly lower base priority, or of a user over its fair share when its own user has
nothing running there.
"""

from __future__ import annotations

import heapq
import math
import zlib
from bisect import bisect_left, insort
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from ..config import PoolConfig, QueueConfig
from ..states import Outcome
from .admission import inadmissible
from .base import (
    Decision,
    Explanation,
    JobRequest,
    Placement,
    Preempt,
    Reject,
    Retry,
    Start,
    TimeOut,
    Warn,
)
from .cluster import Cluster, NodeState

INF = math.inf
QKey = tuple[int, bool]
"""How pending jobs are grouped in the queue structures: (GPUs, has a time limit). Backfill
visits only the groups that may still start; a job without a time limit can never end before
a reservation's shadow time, so it is a group of its own."""


def class_key(cls: tuple[int, int, float]) -> QKey:
    """The queue key of a job class (GPUs, nodes, time limit or INF): the one place it is
    computed, so a job is filed and removed under the same key whatever its time limit."""
    return (cls[0], cls[2] < INF)


N_TIERS = 5
TIER_NAMES = {0: "high", 1: "boosted", 2: "medium", 3: "boosted", 4: "low"}

# job states inside the policy
WAITING = "waiting"  # in retry backoff (not_before in the future)
PENDING = "pending"  # in its pool's queue
RUNNING = "running"  # holds GPUs
STOPPING = "stopping"  # holds GPUs, asked to stop (preempted)


@dataclass(eq=False)
class _Job:
    req: JobRequest
    seq: int
    state: str = PENDING
    tier: int = 0
    aged: bool = False  # waited past oldest_first_after: in its pool's aged heap
    loc_version: int = 0  # bumps whenever the job moves between queue structures
    attempt: int = 0
    placement: Optional[Placement] = None
    started_at: float = 0.0
    charged_scaled: float = 0.0  # usage added (scaled units) for this attempt so far
    charged_until: float = 0.0  # runtime seconds charged ahead so far
    preemptions: int = 0
    preempt_for: Optional[str] = None
    stop_by: float = 0.0
    warned: bool = False
    timeout_sent: bool = False
    reason: str = "new"
    reason_msg: Any = "not yet considered by a scheduling pass"  # str, or a tuple for _msg()
    seen: int = -1  # the pool's pass_no when the reason was set

    @property
    def lkey(self) -> tuple[float, int, str]:
        return (self.req.submit_time, self.seq, self.req.id)


@dataclass(eq=False)
class _User:
    name: str
    weight: float
    scaled: float = 0.0  # usage * 2**((t - t0) / half_life), summed over charges
    version: int = 0
    gpus: int = 0
    running: int = 0
    pool_gpus: dict[str, int] = field(default_factory=dict)
    pool_jobs: dict[str, int] = field(default_factory=dict)  # pending + running, by pool
    # (pool, tier, queue key) -> the user's pending jobs there, by (submit time, seq, id)
    lists: dict[tuple[str, int, QKey], list[tuple[float, int, str]]] = field(default_factory=dict)
    in_heap: set[tuple[str, int, QKey]] = field(default_factory=set)

    @property
    def key(self) -> float:
        return self.scaled / self.weight


@dataclass(eq=False)
class _Pool:
    name: str
    cfg: PoolConfig
    nodes: list[NodeState] = field(default_factory=list)  # up nodes, by name
    total: int = 0
    free: int = 0
    queued: int = 0  # pending + waiting
    # pending jobs by (GPUs, nodes, time limit or INF) -> count: lets a pass stop as soon as
    # no class of pending job can start on what is left (see _fit_sizes)
    classes: dict[tuple[int, int, float], int] = field(default_factory=dict)
    pass_no: int = 0  # bumps at each pass; a job's reason is current if it was seen in this one
    # per tier, per queue key (QKey): a heap of users (share key, name, version) with pending
    # jobs of that key, and a heap of its aged jobs (submit time, seq, id, version). Split so
    # that backfill visits only the groups that can still start.
    uheap: list[dict[QKey, list[tuple[float, str, int]]]] = field(
        default_factory=lambda: [{} for _ in range(N_TIERS)]
    )
    aged: list[dict[QKey, list[tuple[float, int, str, int]]]] = field(
        default_factory=lambda: [{} for _ in range(N_TIERS)]
    )
    dirty: bool = True
    recheck_at: float = INF
    tokens: float = 0.0
    tokens_at: float = 0.0
    active_weight: float = 0.0
    timed_running: int = 0  # running jobs with a time limit, plus stopping ones
    victim_epoch: int = 0  # bumps when a preemptible job starts
    last_fail: tuple[str, int, float] = ("", -1, 0.0)
    reserved_for: Optional[str] = None
    shadow: float = INF
    # free-GPU index of the up nodes: free count -> node names (sorted), for O(1)-ish best fit
    bk: dict[int, list[str]] = field(default_factory=dict)
    nmap: dict[str, NodeState] = field(default_factory=dict)
    maxg: int = 0
    # running/stopping jobs of a preemptible kind, by priority rank (high, medium, low)
    victims_by_rank: list[set[str]] = field(default_factory=lambda: [set(), set(), set()])
    # per GPU need: a lazy heap of (fit time, -free, node, node version) for single-node
    # reservations, and the nodes touched since it was last brought up to date
    rheaps: dict[int, tuple[list[tuple[float, int, str, int]], set[str]]] = field(default_factory=dict)


@dataclass
class _Pass:
    res: Optional[_Job] = None
    res_ready: bool = False
    shadow: float = INF
    spare: dict[str, int] = field(default_factory=dict)
    budget: int = 0
    fail_min: float = INF  # smallest single-node request that failed without a bounded end
    blocked_users: set[str] = field(default_factory=set)
    # single-node "does not fit now" memo (free GPUs and spare only shrink within a pass):
    nofit_all: float = INF  # smallest size that fit on no node at all
    nofit_strict: float = INF  # smallest size that fit on no node outside the reserved spare
    now: float = 0.0
    hsig: tuple = ()  # the inputs _fit_sizes last answered for, and its answer
    fits: frozenset[QKey] = frozenset()


class FairShareScheduler:
    """The gpuqueue policy (see the module docstring and docs/scheduling.md)."""

    def __init__(self, config: QueueConfig, cluster: Optional[Cluster] = None):
        self.config = config
        self.p = config.policy
        self.cluster = cluster or Cluster.from_config(config)
        self.jobs: dict[str, _Job] = {}
        self.users: dict[str, _User] = {}
        self.pools: dict[str, _Pool] = {}
        self.node_jobs: dict[str, set[str]] = {}
        self._seq = 0
        self._t0 = 0.0
        self._now = 0.0
        self._boosts: list[tuple[float, int, str, int]] = []
        self._waits: list[tuple[float, int, str, int]] = []
        self._deadlines: list[tuple[float, int, str, int, int]] = []
        self._accruals: list[tuple[float, int, str, int]] = []
        self.preempt_counts: dict[str, int] = {}
        self._stopping_for: dict[str, int] = {}
        self._preempted_pairs: set[tuple[str, str]] = set()  # (victim, preemptor)
        self._limit_memo: dict[tuple[str, Optional[float]], Optional[float]] = {}
        self._nfree: dict[str, int] = {}  # node -> free count as indexed in its pool's bk
        self._ends: dict[str, list[tuple[float, int]]] = {}  # node -> sorted (end, gpus) of its jobs
        self._tfit: dict[str, dict[int, float]] = {}  # node -> need -> raw fit time (see _reserve)
        self._order_epoch = 0  # bumps when any pool's order may change (see _positions)
        self._positions: dict[str, tuple[int, dict[str, int]]] = {}  # pool -> (epoch, id -> position)
        self._stop_g: dict[str, int] = {}  # node -> GPUs of its jobs asked to stop (preempted)
        self._nver: dict[str, int] = {}  # node -> version, bumped by _touch (see _Pool.rheaps)
        for name, pc in config.pools.items():
            self.pools[name] = _Pool(name, pc, tokens=self.p.preemption_budget)
        self._rebuild_pools()

    # ---------------------------------------------------------------- bookkeeping helpers
    def _rebuild_pools(self) -> None:
        for P in self.pools.values():
            P.nodes = []
            P.rheaps = {}
        for n in sorted(self.cluster.nodes.values(), key=lambda n: n.name):
            if n.pool not in self.pools:
                self.pools[n.pool] = _Pool(
                    n.pool, PoolConfig(nodes={n.name: n.gpus}), tokens=self.p.preemption_budget
                )
            if n.up:
                self.pools[n.pool].nodes.append(n)
            self.node_jobs.setdefault(n.name, set())
        self._nfree = {}
        self._ends = {}
        self._tfit = {}
        for P in self.pools.values():
            P.total = sum(n.gpus for n in P.nodes)
            P.free = sum(len(n.free) for n in P.nodes)
            P.dirty = True
            P.bk = {}
            P.nmap = {n.name: n for n in P.nodes}
            P.maxg = max((n.gpus for n in P.nodes), default=0)
            for n in P.nodes:  # P.nodes is by name: the buckets come out sorted
                f = len(n.free)
                P.bk.setdefault(f, []).append(n.name)
                self._nfree[n.name] = f

    def _touch(self, nodes: Any) -> None:
        """Nodes whose jobs or free GPUs changed: re-bucket them, drop their cached end times."""
        for name in nodes:
            self._ends.pop(name, None)
            self._tfit.pop(name, None)
            old = self._nfree.get(name)
            if old is None:
                continue  # down or unknown: not indexed
            n = self.cluster.nodes[name]
            self._nver[name] = self._nver.get(name, 0) + 1
            for _, dirty in self.pools[n.pool].rheaps.values():
                dirty.add(name)
            new = len(n.free)
            if new == old:
                continue
            P = self.pools[n.pool]
            lst = P.bk[old]
            del lst[bisect_left(lst, name)]
            insort(P.bk.setdefault(new, []), name)
            self._nfree[name] = new

    def _user(self, name: str) -> _User:
        u = self.users.get(name)
        if u is None:
            u = _User(name, self.config.limits_for(name).weight)
            self.users[name] = u
        return u

    def _scale(self, t: float) -> float:
        e = (t - self._t0) / self.p.half_life
        if e > 60:  # e.g. the first call with wall-clock time: rebase before 2**e overflows
            self._maybe_renormalize(t)
            e = (t - self._t0) / self.p.half_life
        return 2.0 ** e

    def _charge(self, u: _User, scaled: float) -> None:
        if scaled == 0:
            return
        u.scaled = max(0.0, u.scaled + scaled)
        u.version += 1
        u.in_heap.clear()
        for (pool, tier, g), lst in u.lists.items():
            if lst:
                self._push_user(u, pool, tier, g)
                self.pools[pool].dirty = True
                self._order_epoch += 1

    def _maybe_renormalize(self, now: float) -> None:
        if (now - self._t0) / self.p.half_life < 60:
            return
        f = 2.0 ** min((now - self._t0) / self.p.half_life, 1000.0)  # capped: no overflow
        self._t0 = now
        self._order_epoch += 1
        for u in self.users.values():
            u.scaled /= f
            u.version += 1
            u.in_heap.clear()
        for j in self.jobs.values():
            j.charged_scaled /= f
        for P in self.pools.values():
            P.uheap = [{} for _ in range(N_TIERS)]
        for u in self.users.values():
            for (pool, tier, g), lst in u.lists.items():
                if lst:
                    self._push_user(u, pool, tier, g)

    def _push_user(self, u: _User, pool: str, tier: int, g: QKey) -> None:
        k = (pool, tier, g)
        if k in u.in_heap:
            return
        u.in_heap.add(k)
        heapq.heappush(self.pools[pool].uheap[tier].setdefault(g, []), (u.key, u.name, u.version))

    def usage(self, user: str, now: float) -> float:
        """The user's decayed GPU-hours as of ``now`` (charges ahead included)."""
        u = self.users.get(user)
        return 0.0 if u is None else u.scaled / self._scale(now)

    def _limit(self, req: JobRequest) -> Optional[float]:
        key = (req.pool, req.time_limit)
        lim = self._limit_memo.get(key, -1.0)
        if lim != -1.0:
            return lim
        lim = self._limit_calc(req)
        self._limit_memo[key] = lim
        return lim

    def _limit_calc(self, req: JobRequest) -> Optional[float]:
        """min(job time limit or pool default_timeout, pool max_runtime); a limit that is not a
        finite number (inf, nan) counts as none, so every structure agrees on it."""
        pc = self.pools[req.pool].cfg
        lim = req.time_limit if req.time_limit is not None else pc.default_timeout
        if lim is not None and not math.isfinite(lim):
            lim = None
        if pc.max_runtime is not None and math.isfinite(pc.max_runtime):
            lim = pc.max_runtime if lim is None else min(lim, pc.max_runtime)
        return lim

    def _class(self, req: JobRequest) -> tuple[int, int, float]:
        lim = self._limit(req)
        return (req.gpus, req.nodes, INF if lim is None else lim)

    def _queue_key(self, req: JobRequest) -> QKey:
        """The job's queue key: see ``class_key``."""
        return class_key(self._class(req))

    def _tier_at(self, job: _Job, now: float) -> tuple[int, bool, float]:
        """(tier, aged, time of the job's next change of place or INF). ``aged``: waited past
        ``oldest_first_after``, so it goes before the non-aged jobs of its tier, oldest first."""
        req = job.req
        T = self.pools[req.pool].cfg.starvation_timeout
        rank = req.priority.rank
        A = self.p.oldest_first_after
        aged = A > 0 and req.submit_time + A <= now
        t_aged = req.submit_time + A if A > 0 and not aged else INF
        if rank == 0 or T <= 0:
            return (0 if rank == 0 else 2 * rank), aged, t_aged
        steps = int(max(0.0, now - req.submit_time) // T)
        # float-safe: the step count must agree with submit + k * T <= now
        while req.submit_time + (steps + 1) * T <= now:
            steps += 1
        while steps > 0 and req.submit_time + steps * T > now:
            steps -= 1
        b = min(steps, self.p.starvation_boost_cap)
        tier = max(2 * rank - b, 1)
        final = tier == 1 or b >= self.p.starvation_boost_cap
        t_boost = INF if final else req.submit_time + (steps + 1) * T
        return tier, aged, min(t_boost, t_aged)

    def _set_pool_job_count(self, u: _User, pool: str, delta: int) -> None:
        before = u.pool_jobs.get(pool, 0)
        after = before + delta
        u.pool_jobs[pool] = after
        P = self.pools[pool]
        if before == 0 and after > 0:
            P.active_weight += u.weight
        elif before > 0 and after == 0:
            P.active_weight -= u.weight

    # ------------------------------------------------------------------- queue in / out
    def _enqueue(self, job: _Job, now: float) -> None:
        """Put a job (new, retried or requeued) into its pool's queue or the backoff heap."""
        req = job.req
        job.loc_version += 1
        if req.not_before > now:
            job.state = WAITING
            heapq.heappush(self._waits, (req.not_before, job.seq, req.id, job.loc_version))
            return
        job.state = PENDING
        self._order_epoch += 1
        P = self.pools[req.pool]
        c = self._class(req)
        P.classes[c] = P.classes.get(c, 0) + 1
        P.dirty = True
        tier, aged, nxt = self._tier_at(job, now)
        job.tier, job.aged = tier, aged
        qk = self._queue_key(req)
        if aged:
            heapq.heappush(P.aged[tier].setdefault(qk, []),
                           (req.submit_time, job.seq, req.id, job.loc_version))
        else:
            u = self._user(req.user)
            lst = u.lists.setdefault((req.pool, tier, qk), [])
            insort(lst, job.lkey)
            self._push_user(u, req.pool, tier, qk)
        if nxt < INF:
            heapq.heappush(self._boosts, (nxt, job.seq, req.id, job.loc_version))

    def _dequeue(self, job: _Job) -> None:
        """Take a pending job out of the queue structures (aged heaps are lazy)."""
        self._order_epoch += 1
        req = job.req
        P = self.pools[req.pool]
        c = self._class(req)
        P.classes[c] -= 1
        if not P.classes[c]:
            del P.classes[c]
        if not job.aged:
            qk = self._queue_key(req)
            lst = self.users[req.user].lists.get((req.pool, job.tier, qk), [])
            i = bisect_left(lst, job.lkey)
            if i < len(lst) and lst[i] == job.lkey:
                del lst[i]
        job.loc_version += 1

    # --------------------------------------------------------------------------- events
    def submit(self, job: JobRequest, now: float, restoring: bool = False) -> Optional[Reject]:
        """Accept a job into its pool's queue, or say why not (admission and depth limits)."""
        self._now = max(self._now, now)
        if job.id in self.jobs:
            if not restoring:
                return Reject(job.id, f"job {job.id!r} is already queued or running")
            self._forget(job.id, now)
        why = inadmissible(job, self.config, self.cluster)
        if why and not restoring:
            return Reject(job.id, why)
        if job.pool not in self.pools:
            return Reject(job.id, why or f"unknown pool {job.pool!r}")
        P = self.pools[job.pool]
        lim = self.config.limits_for(job.user)
        if not restoring:
            if lim.max_gpus is not None and job.gpus > lim.max_gpus:
                return Reject(job.id, f"{job.gpus} GPUs is over your quota of {lim.max_gpus} GPUs; ask for at most {lim.max_gpus}")
            if P.cfg.max_gpus_per_user is not None and job.gpus > P.cfg.max_gpus_per_user:
                return Reject(job.id, f"{job.gpus} GPUs is over pool {job.pool!r}'s per-user limit of {P.cfg.max_gpus_per_user}")
            if P.queued >= P.cfg.max_queued:
                return Reject(job.id, f"pool {job.pool!r} queue is full ({P.queued} jobs, limit {P.cfg.max_queued}); try again later or use another pool")
            u = self.users.get(job.user)
            mine = 0 if u is None else sum(u.pool_jobs.values()) - u.running
            if mine >= lim.max_queued:
                return Reject(job.id, f"you have {mine} queued jobs, the limit is {lim.max_queued}; wait for some to start or cancel some")
        self._seq += 1
        j = _Job(job, self._seq, preemptions=self.preempt_counts.get(job.id, 0))
        self.jobs[job.id] = j
        u = self._user(job.user)
        self._set_pool_job_count(u, job.pool, +1)
        P.queued += 1
        self._enqueue(j, now)
        return None

    def restore_running(self, job: JobRequest, placement: Placement, started_at: float) -> None:
        """At rebuild: this job already holds these GPUs (its charges are in the imported state)."""
        if job.id in self.jobs:
            self._forget(job.id, started_at)
        self._seq += 1
        j = _Job(job, self._seq, state=RUNNING)
        self.jobs[job.id] = j
        u = self._user(job.user)
        self._set_pool_job_count(u, job.pool, +1)
        self._occupy(j, placement, started_at)
        elapsed = max(0.0, self._now - started_at)
        chunk = self.p.charge_ahead
        j.charged_until = (math.floor(elapsed / chunk) + 1) * chunk if chunk > 0 else elapsed
        j.charged_scaled = job.gpus * j.charged_until / 3600.0 * self._scale(started_at)
        if chunk > 0:
            heapq.heappush(self._accruals, (started_at + j.charged_until, j.seq, job.id, j.attempt))
        self._push_deadlines(j)

    def started(self, job_id: str, now: float) -> None:
        """The job process is confirmed running: its runtime clock (time limit) restarts now."""
        j = self.jobs.get(job_id)
        if j is None or j.state != RUNNING:
            return
        j.started_at = now
        j.warned = False
        if j.placement:
            self._touch(j.placement)
        self._push_deadlines(j)

    def finished(self, job_id: str, outcome: Outcome, now: float) -> list[Decision]:
        """An attempt ended: free its GPUs, true up its charge, and requeue or retry it."""
        self._now = max(self._now, now)
        j = self.jobs.get(job_id)
        if j is None or j.state not in (RUNNING, STOPPING):
            return []
        self._vacate(j, now)
        req = j.req
        if outcome in (Outcome.PREEMPTED, Outcome.LOST):
            if outcome == Outcome.PREEMPTED:
                j.preemptions += 1
                self.preempt_counts[job_id] = j.preemptions
            j.req = replace(req, not_before=now)
            self._requeue(j, now)
            return [Retry(job_id, now, counted=False)]
        if outcome == Outcome.FAILED and req.failures < req.max_retries:
            at = now + self.backoff(req.id, req.failures)
            j.req = replace(req, failures=req.failures + 1, not_before=at)
            self._requeue(j, now)
            return [Retry(job_id, at, counted=True)]
        self._drop(j)
        return []

    def backoff(self, job_id: str, failures: int) -> float:
        """Seconds before retry number ``failures + 1``: exponential, capped, with hashed jitter."""
        base = min(self.config.retry_backoff * 2.0**failures, self.config.retry_backoff_max)
        h = zlib.crc32(f"{job_id}:{failures}".encode()) / 0xFFFFFFFF  # in [0, 1]
        return base * (1.0 + self.p.retry_jitter * (2.0 * h - 1.0))

    def cancel(self, job_id: str, now: float) -> None:
        """Forget a job; a running one's GPUs are freed and its usage trued up."""
        self._now = max(self._now, now)
        self._forget(job_id, now)

    def _forget(self, job_id: str, now: float) -> None:
        j = self.jobs.get(job_id)
        if j is None:
            return
        if j.state in (RUNNING, STOPPING):
            self._vacate(j, now)
        elif j.state == PENDING:
            self._dequeue(j)
            self.pools[j.req.pool].queued -= 1
        else:
            j.loc_version += 1
            self.pools[j.req.pool].queued -= 1
        self._drop(j)

    def _drop(self, j: _Job) -> None:
        P = self.pools[j.req.pool]
        if P.reserved_for == j.req.id:
            P.reserved_for, P.shadow = None, INF
        self._set_pool_job_count(self.users[j.req.user], j.req.pool, -1)
        del self.jobs[j.req.id]
        self.preempt_counts.pop(j.req.id, None)

    def _requeue(self, j: _Job, now: float) -> None:
        self.pools[j.req.pool].queued += 1
        self._enqueue(j, now)

    def node_up(self, node: str, pool: str, gpus: int, now: float) -> None:
        """A node joined or came back (with all its GPUs free)."""
        self._now = max(self._now, now)
        old = self.cluster.nodes.get(node)
        if old is not None and old.up:
            self.node_down(node, now)  # jobs there are lost; the shell hears via finished()
        self.cluster.nodes[node] = NodeState(node, pool, gpus, up=True)
        self.node_jobs[node] = set()
        self._rebuild_pools()

    def node_down(self, node: str, now: float) -> list[Decision]:
        """A node is gone: its jobs are lost (not failures) and requeued; Retry for each."""
        self._now = max(self._now, now)
        out: list[Decision] = []
        for job_id in sorted(self.node_jobs.get(node, ())):
            out += self.finished(job_id, Outcome.LOST, now)
        n = self.cluster.nodes.get(node)
        if n is not None:
            n.up = False
            n.free = set()
        self._rebuild_pools()
        return out

    # --------------------------------------------------------------- occupy / vacate GPUs
    def _occupy(self, j: _Job, placement: Placement, now: float) -> None:
        self.cluster.allocate(placement)
        req = j.req
        P = self.pools[req.pool]
        P.free -= req.gpus
        j.state = RUNNING
        j.placement = placement
        j.started_at = now
        j.attempt += 1
        j.warned = j.timeout_sent = False
        j.preempt_for = None
        for node in placement:
            self.node_jobs.setdefault(node, set()).add(req.id)
        self._touch(placement)
        u = self.users[req.user]
        u.gpus += req.gpus
        u.running += 1
        u.pool_gpus[req.pool] = u.pool_gpus.get(req.pool, 0) + req.gpus
        if self._victim_kind(P, j):
            P.victims_by_rank[req.priority.rank].add(req.id)
            P.victim_epoch += 1
        if self._limit(req) is not None:
            P.timed_running += 1

    @staticmethod
    def _victim_kind(P: _Pool, j: _Job) -> bool:
        return j.req.preemptible or P.cfg.preemptible

    def _vacate(self, j: _Job, now: float) -> None:
        req = j.req
        P = self.pools[req.pool]
        assert j.placement is not None
        if j.state == STOPPING:
            for node, ids in j.placement.items():
                self._stop_g[node] -= len(ids)
        for node, ids in j.placement.items():
            n = self.cluster.nodes.get(node)
            if n is not None and n.up:
                P.free += len(ids)
            self.node_jobs.get(node, set()).discard(req.id)
        self.cluster.release(j.placement)
        self._touch(j.placement)
        j.placement = None
        u = self.users[req.user]
        u.gpus -= req.gpus
        u.running -= 1
        u.pool_gpus[req.pool] -= req.gpus
        actual = req.gpus * max(0.0, now - j.started_at) / 3600.0 * self._scale(now)
        self._charge(u, actual - j.charged_scaled)
        j.charged_scaled = 0.0
        j.charged_until = 0.0
        if self._victim_kind(P, j):
            P.victims_by_rank[req.priority.rank].discard(req.id)
        if self._limit(req) is not None or j.state == STOPPING:
            P.timed_running -= 1
        if j.state == STOPPING and j.preempt_for is not None:
            self._stopping_for[j.preempt_for] -= 1
            if not self._stopping_for[j.preempt_for]:
                del self._stopping_for[j.preempt_for]
        j.preempt_for = None
        for Q in self.pools.values():
            Q.dirty = True  # freed GPUs here; freed quota everywhere

    def _start(self, j: _Job, placement: Placement, now: float, out: list[Decision]) -> None:
        self._dequeue(j)
        P = self.pools[j.req.pool]
        P.queued -= 1
        self._occupy(j, placement, now)
        j.reason, j.reason_msg = "running", "started"
        chunk = self.p.charge_ahead
        lim = self._limit(j.req)
        first = chunk if lim is None else min(chunk, lim)
        if chunk > 0:
            j.charged_until = first
            scaled = j.req.gpus * first / 3600.0 * self._scale(now)
            j.charged_scaled = scaled
            self._charge(self.users[j.req.user], scaled)
            if lim is None or first < lim:
                heapq.heappush(self._accruals, (now + first, j.seq, j.req.id, j.attempt))
        self._push_deadlines(j)
        P.dirty = True
        out.append(Start(j.req.id, placement))

    def _push_deadlines(self, j: _Job) -> None:
        lim = self._limit(j.req)
        if lim is None:
            return
        warn = min(self.p.timeout_warning, 0.1 * lim)
        end = j.started_at + lim
        if warn > 0:
            heapq.heappush(self._deadlines, (end - warn, j.seq, j.req.id, j.attempt, 0))
        heapq.heappush(self._deadlines, (end, j.seq, j.req.id, j.attempt, 1))

    # ------------------------------------------------------------------------------ tick
    def tick(self, now: float) -> list[Decision]:
        """One scheduling pass: timeouts and warnings, boosts, retries due, starts, preemptions."""
        self._now = max(self._now, now)
        self._maybe_renormalize(now)
        out: list[Decision] = []
        self._timers(now, out)
        for P in self.pools.values():
            if P.recheck_at <= now:
                P.recheck_at = INF
                P.dirty = True
            if P.dirty:
                P.dirty = False
                self._schedule_pool(P, now, out)
        return out

    def _timers(self, now: float, out: list[Decision]) -> None:
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            t, _, jid, attempt, kind = heapq.heappop(dl)
            j = self.jobs.get(jid)
            if j is None or j.state not in (RUNNING, STOPPING) or j.attempt != attempt:
                continue
            lim = self._limit(j.req)
            if lim is None:
                continue
            end = j.started_at + lim
            if kind == 0 and not j.warned and not j.timeout_sent and t <= end:
                if abs((end - min(self.p.timeout_warning, 0.1 * lim)) - t) < 1e-6:
                    j.warned = True
                    out.append(Warn(jid, f"time limit reached in {end - now:.0f}s: save a checkpoint"))
            elif kind == 1 and not j.timeout_sent and abs(end - t) < 1e-6:
                j.timeout_sent = True
                out.append(TimeOut(jid))
        ac = self._accruals
        while ac and ac[0][0] <= now:
            t, _, jid, attempt = heapq.heappop(ac)
            j = self.jobs.get(jid)
            if j is None or j.state not in (RUNNING, STOPPING) or j.attempt != attempt:
                continue
            lim = self._limit(j.req)
            nxt = j.charged_until + self.p.charge_ahead
            if lim is not None:
                nxt = min(nxt, lim)
            add = j.req.gpus * (nxt - j.charged_until) / 3600.0 * self._scale(t)
            j.charged_until = nxt
            j.charged_scaled += add
            self._charge(self.users[j.req.user], add)
            if lim is None or nxt < lim:
                heapq.heappush(ac, (j.started_at + nxt, j.seq, jid, attempt))
        ws = self._waits
        while ws and ws[0][0] <= now:
            _, _, jid, ver = heapq.heappop(ws)
            j = self.jobs.get(jid)
            if j is not None and j.state == WAITING and j.loc_version == ver:
                self._enqueue(j, now)
        bs = self._boosts
        while bs and bs[0][0] <= now:
            _, _, jid, ver = heapq.heappop(bs)
            j = self.jobs.get(jid)
            if j is not None and j.state == PENDING and j.loc_version == ver:
                self._dequeue(j)
                self._enqueue(j, now)

    def next_wakeup(self) -> Optional[float]:
        """The earliest time at which ``tick`` has work (timeouts, boosts, retries, usage
        charges, preemption rechecks, or events since the last pass: then the latest time
        seen); None if there is none. Shells should tick then."""
        def live_q(e: tuple, state: str) -> bool:
            j = self.jobs.get(e[2])
            return j is not None and j.state == state and j.loc_version == e[3]

        def live_r(e: tuple) -> bool:
            j = self.jobs.get(e[2])
            return j is not None and j.state in (RUNNING, STOPPING) and j.attempt == e[3]

        for h, ok in ((self._deadlines, live_r), (self._accruals, live_r),
                      (self._waits, lambda e: live_q(e, WAITING)),
                      (self._boosts, lambda e: live_q(e, PENDING))):
            while h and not ok(h[0]):
                heapq.heappop(h)
        cands = [h[0][0] for h in (self._deadlines, self._accruals, self._waits, self._boosts) if h]
        if any(P.dirty and P.classes for P in self.pools.values()):
            cands.append(self._now)  # something changed since the last pass: tick again now
        cands += [P.recheck_at for P in self.pools.values() if P.recheck_at < INF]
        return min(cands) if cands else None

    # ---------------------------------------------------------------------- the pass
    def _schedule_pool(self, P: _Pool, now: float, out: list[Decision]) -> None:
        P.reserved_for, P.shadow = None, INF
        if not P.classes or not P.nodes:
            return
        P.pass_no += 1
        ctx = _Pass(budget=self.p.backfill_depth, now=now)
        for t in range(N_TIERS):
            if (P.aged[t] and self._scan_aged(P, t, ctx, now, out)) or (
                P.uheap[t] and self._scan_users(P, t, ctx, now, out)
            ):
                break
        if ctx.res is not None:
            P.reserved_for = ctx.res.req.id
            if ctx.res_ready:
                P.shadow = ctx.shadow
            self._try_preempt(P, ctx.res, now, out)

    def _fit_sizes(self, P: _Pool, ctx: _Pass) -> Optional[frozenset[QKey]]:
        """The queue keys (GPUs, has a time limit) of pending jobs that may still start in this
        pass; None before the reservation (every job is tried, in order). After it, a key is out
        when every class of pending job under it (nodes, time limit) is too big for the free
        GPUs, or the pass already saw a job of that size or smaller fail to fit: anywhere, or
        outside the reserved GPUs when it would not end before the shadow time. Free GPUs only
        shrink within a pass, so this is exact. Memoized on its inputs."""
        if ctx.res is None:
            return None
        sig = (P.free, ctx.nofit_all, ctx.nofit_strict, ctx.fail_min, ctx.shadow, ctx.res_ready,
               bool(ctx.spare), len(P.classes))
        if sig == ctx.hsig:
            return ctx.fits
        ctx.hsig = sig
        free, shadow, bk, now = P.free, ctx.shadow, P.bk, ctx.now
        unbounded = not ctx.res_ready or shadow == INF
        fits: set[QKey] = set()
        for g, nodes, lim in P.classes:
            qk = class_key((g, nodes, lim))
            if qk in fits or g > free or g >= ctx.nofit_all:
                continue
            if nodes > 1:  # needs `nodes` idle nodes: at least that many with `per` GPUs free
                if sum(len(v) for f, v in bk.items() if f >= g // nodes) >= nodes:
                    fits.add(qk)
                continue
            if unbounded and g >= ctx.fail_min:
                continue
            if ctx.spare and g >= ctx.nofit_strict and not (shadow < INF and now + lim <= shadow):
                continue
            fits.add(qk)
        ctx.fits = frozenset(fits)
        return ctx.fits

    def _scan_aged(self, P: _Pool, t: int, ctx: _Pass, now: float, out: list[Decision]) -> bool:
        """Aged jobs of tier ``t`` (waited past ``oldest_first_after``), oldest first (a merge of the per-size heaps). Returns
        True when the pass is over (budget spent or nothing left can fit)."""
        heaps = P.aged[t]
        if not heaps:
            return False
        jobs = self.jobs
        heappop = heapq.heappop
        kept: list[tuple[list, tuple[float, int, str, int]]] = []
        stop = False
        while True:
            allowed = self._fit_sizes(P, ctx)
            if allowed is not None and (ctx.budget <= 0 or not allowed):
                stop = True
                break
            best: Optional[tuple[float, int, str, int]] = None
            bh: list = []
            for g, h in heaps.items():
                if allowed is not None and g not in allowed:
                    continue
                while h:
                    e = h[0]
                    j = jobs.get(e[2])
                    if j is None or j.state != PENDING or j.loc_version != e[3]:
                        heappop(h)
                        continue
                    if best is None or e < best:
                        best, bh = e, h
                    break
            if best is None:
                break
            heappop(bh)
            if self._consider(P, jobs[best[2]], ctx, now, out) != "started":
                kept.append((bh, best))
        for h, e in kept:
            heapq.heappush(h, e)
        for g in [g for g, h in heaps.items() if not h]:
            del heaps[g]
        return stop

    def _scan_users(self, P: _Pool, t: int, ctx: _Pass, now: float, out: list[Decision]) -> bool:
        """Other jobs of tier ``t``: users by share key (a merge of the per-size user
        heaps), each user's jobs oldest first. Returns True when the pass is over."""
        heaps = P.uheap[t]
        if not heaps:
            return False
        users, jobs = self.users, self.jobs
        heappop = heapq.heappop
        blocked = ctx.blocked_users
        pname = P.name
        idx: dict[tuple[str, QKey], int] = {}  # (user, key) -> jobs of that list passed over
        popped: list[tuple[_User, QKey]] = []
        stop = False
        while True:
            allowed = self._fit_sizes(P, ctx)
            if allowed is not None and (ctx.budget <= 0 or not allowed):
                stop = True
                break
            best: Optional[tuple[float, str]] = None
            for g, h in heaps.items():
                if allowed is not None and g not in allowed:
                    continue
                ptg = (pname, t, g)
                while h:
                    key, name, ver = h[0]
                    u = users[name]
                    if ver != u.version or ptg not in u.in_heap:
                        heappop(h)
                        continue
                    lst = u.lists.get(ptg)
                    if not lst or idx.get((name, g), 0) >= len(lst) or name in blocked:
                        heappop(h)
                        u.in_heap.discard(ptg)
                        if lst:
                            popped.append((u, g))
                        continue
                    if best is None or (key, name) < best:
                        best = (key, name)
                    break
            if best is None:
                break
            name = best[1]
            u = users[name]
            first: Optional[tuple[float, int, str]] = None
            fg: QKey = (0, False)
            for g in heaps:  # the user's oldest job among the sizes still in play
                if allowed is not None and g not in allowed:
                    continue
                lst = u.lists.get((pname, t, g))
                if lst:
                    i = idx.get((name, g), 0)
                    if i < len(lst) and (first is None or lst[i] < first):
                        first, fg = lst[i], g
            assert first is not None
            r = self._consider(P, jobs[first[2]], ctx, now, out)
            if r == "blocked":
                idx[(name, fg)] = idx.get((name, fg), 0) + 1
            elif r == "user":
                blocked.add(name)
            # "started": the charge bumped the user's version and re-pushed its entries
        for u, g in popped:
            if u.lists.get((pname, t, g)):
                self._push_user(u, pname, t, g)
        for g in [g for g, h in heaps.items() if not h]:
            del heaps[g]
        return stop

    def _quota(self, P: _Pool, req: JobRequest) -> Optional[tuple[str, str]]:
        u = self.users[req.user]
        lim = self.config.limits_for(req.user)
        if lim.max_running is not None and u.running + 1 > lim.max_running:
            return "quota_running", f"you have {u.running} jobs running, your limit is {lim.max_running}"
        if lim.max_gpus is not None and u.gpus + req.gpus > lim.max_gpus:
            return "quota_gpus", f"you hold {u.gpus} GPUs, your limit is {lim.max_gpus}"
        cap = P.cfg.max_gpus_per_user
        if cap is not None and u.pool_gpus.get(P.name, 0) + req.gpus > cap:
            return "quota_pool_gpus", f"you hold {u.pool_gpus.get(P.name, 0)} GPUs in pool {P.name!r}, its per-user limit is {cap}"
        return None

    def _consider(self, P: _Pool, j: _Job, ctx: _Pass, now: float, out: list[Decision]) -> str:
        req = j.req
        j.seen = P.pass_no
        q = self._quota(P, req)
        if q is not None:
            j.reason, j.reason_msg = q
            return "user"
        placement = None
        if req.gpus <= P.free and not (req.nodes <= 1 and req.gpus >= ctx.fail_min
                                       and (not ctx.res_ready or ctx.shadow == INF)):
            placement = self._place(P, req, ctx, now)
            if placement is None and req.nodes <= 1 and ctx.res is not None:
                lim = self._limit(req)
                if lim is None or not ctx.res_ready or ctx.shadow == INF or now + lim > ctx.shadow:
                    ctx.fail_min = min(ctx.fail_min, req.gpus)
        if placement is not None:
            self._start(j, placement, now, out)
            return "started"
        if ctx.res is None:
            ctx.res = j
            j.reason = "resources"
            j.reason_msg = f"waiting for {req.gpus} GPUs in pool {P.name!r} ({P.free}/{P.total} free); GPUs are reserved for it"
        else:
            ctx.budget -= 1
            if req.gpus <= P.free:
                j.reason = "reservation"
                j.reason_msg = (0, ctx.res.req.id)
            else:
                j.reason = "resources" if ctx.res.req.priority.rank >= req.priority.rank else "priority"
                j.reason_msg = (1, req.gpus, P.name, P.free, P.total, ctx.res.req.id)
        return "blocked"

    def _end_estimate(self, j: _Job) -> float:
        if j.state == STOPPING:
            return j.stop_by
        lim = self._limit(j.req)
        return INF if lim is None else j.started_at + lim

    def _reserve(self, P: _Pool, ctx: _Pass, now: float) -> None:
        """Pick the nodes and the earliest start (shadow time) for the reserved job."""
        ctx.res_ready = True
        req = ctx.res.req  # type: ignore[union-attr]
        cands: list[tuple[float, int, str, int]] = []
        per = req.gpus // max(1, req.nodes)
        if P.timed_running == 0:  # no end is known: the nodes closest to fitting, shadow unknown
            for n in P.nodes:
                if n.gpus >= per:
                    need = per if req.nodes == 1 else n.gpus
                    cands.append((now if len(n.free) >= need else INF, -len(n.free), n.name, n.gpus))
            cands.sort()
            chosen = cands[: max(1, req.nodes)]
            ctx.shadow = max((c[0] for c in chosen), default=INF)
            if len(chosen) < max(1, req.nodes):
                ctx.shadow = INF
            ctx.spare = {c[2]: (0 if req.nodes > 1 else c[3] - per) for c in chosen}
            return
        if req.nodes <= 1:
            chosen = self._soonest_node(P, per, now)
            if not chosen:
                ctx.shadow = INF
                ctx.spare = {}
                return
            self._set_spare(ctx, chosen, per, False)
            return
        tfit_all = self._tfit
        for n in P.nodes:
            if n.gpus < per:
                continue
            need = per if req.nodes == 1 else n.gpus
            tf = tfit_all.get(n.name)
            if tf is None:
                tf = tfit_all[n.name] = {}
            raw = tf.get(need)
            if raw is None:
                raw = tf[need] = self._fit_time(n, need)
            # raw: -INF fits now, INF never (by known ends), else the end that makes it fit
            t_fit = now if raw == -INF else (INF if raw == INF else max(now, raw))
            cands.append((t_fit, -len(n.free), n.name, n.gpus))
        if req.nodes <= 1:
            chosen = [min(cands)] if cands else []
        else:
            cands.sort()
            chosen = cands[: req.nodes]
        if len(chosen) < max(1, req.nodes):
            ctx.shadow = INF
            ctx.spare = {}
            return
        self._set_spare(ctx, chosen, per, req.nodes > 1)

    def _set_spare(self, ctx: _Pass, chosen: list[tuple[float, int, str, int]], per: int, multi: bool) -> None:
        """Shadow time and spare GPUs of the chosen (fit time, -free, node, GPUs) nodes."""
        ctx.shadow = max(c[0] for c in chosen)
        ctx.spare = {}
        for t_fit, _, name, gpus in chosen:
            if multi:
                ctx.spare[name] = 0
                continue
            n = self.cluster.nodes[name]
            f = len(n.free)
            for jid in self.node_jobs.get(name, ()):
                jj = self.jobs.get(jid)
                if jj is not None and jj.placement and self._end_estimate(jj) <= ctx.shadow:
                    f += len(jj.placement.get(name, ()))
            ctx.spare[name] = max(0, f - per)

    def _soonest_node(self, P: _Pool, need: int, now: float) -> list[tuple[float, int, str, int]]:
        """The node where ``need`` GPUs are free soonest by known ends, as [(fit time, -free,
        name, GPUs)] (empty if none has enough GPUs): min by (max(now, fit time), -free, name),
        from a per-need heap brought up to date with the nodes touched since its last use."""
        entry = P.rheaps.get(need)
        if entry is None:
            entry = P.rheaps[need] = ([], {n.name for n in P.nodes})
        heap, dirty = entry
        nver, nmap = self._nver, P.nmap
        for name in dirty:
            n = nmap.get(name)
            if n is not None and n.gpus >= need:
                heapq.heappush(heap, (self._fit_time(n, need), -len(n.free), name, nver.get(name, 0)))
        dirty.clear()
        due: list[tuple[float, int, str, int]] = []  # fit times already reached tie at `now`
        while heap:
            raw, negfree, name, ver = heap[0]
            if ver != nver.get(name, 0) or name not in nmap:
                heapq.heappop(heap)
                continue
            if raw > now or due and raw == INF:
                break
            due.append(heapq.heappop(heap))
        for e in due:
            heapq.heappush(heap, e)
        if due:
            best = min((max(now, e[0]) if e[0] < INF else INF, e[1], e[2]) for e in due)
        elif heap:
            best = heap[0][:3]
        else:
            return []
        return [(best[0] if best[0] == INF else max(now, best[0]), best[1], best[2], nmap[best[2]].gpus)]

    def _node_ends(self, name: str) -> list[tuple[float, int]]:
        """Sorted (end estimate, job GPUs) of the jobs on a node (cached; _touch drops it)."""
        ends = self._ends.get(name)
        if ends is None:
            jobs = self.jobs
            ends = sorted(
                (self._end_estimate(jobs[jid]), jobs[jid].req.gpus)
                for jid in self.node_jobs.get(name, ())
                if jid in jobs and jobs[jid].placement and name in jobs[jid].placement
            )
            self._ends[name] = ends
        return ends

    def _fit_time(self, n: NodeState, need: int) -> float:
        """-INF if ``need`` GPUs are free on the node now; else the known end time after which
        they are (before clamping to now); INF if known ends never free enough."""
        f = len(n.free)
        if f >= need:
            return -INF
        t = INF
        for end, g in self._node_ends(n.name):
            if f >= need:
                break
            f += g
            t = end
        return t if f >= need else INF

    def _place(self, P: _Pool, req: JobRequest, ctx: Optional[_Pass], now: float) -> Optional[Placement]:
        """Best-fit gang placement that leaves the reservation (if any) undisturbed."""
        g = req.gpus
        spare: dict[str, int] = {}
        fits_before = True
        if ctx is not None and ctx.res is not None:
            if not ctx.res_ready:
                self._reserve(P, ctx, now)
            spare = ctx.spare
            lim = self._limit(req)
            end = INF if lim is None else now + lim
            fits_before = ctx.shadow < INF and end <= ctx.shadow
        bk = P.bk
        if req.nodes <= 1:
            check = not fits_before and bool(spare)
            if ctx is not None and (g >= ctx.nofit_all or (check and g >= ctx.nofit_strict)):
                return None  # a smaller or equal request already failed this pass
            # best fit: the fewest free GPUs that still fit, ties by name (buckets are sorted)
            for f in range(g, P.maxg + 1):
                lst = bk.get(f)
                if not lst:
                    continue
                for name in lst:
                    if check and name in spare and g > spare[name]:
                        continue
                    if check and name in spare:
                        spare[name] -= g
                    return {name: tuple(sorted(P.nmap[name].free)[:g])}
            if ctx is not None:
                if check:
                    ctx.nofit_strict = min(ctx.nofit_strict, g)
                else:
                    ctx.nofit_all = min(ctx.nofit_all, g)
            return None
        per = g // req.nodes
        idle: list[NodeState] = []
        for f in range(max(per, 0), P.maxg + 1):  # idle nodes by (gpus, name)
            for name in bk.get(f, ()):
                n = P.nmap[name]
                if n.gpus == f and (fits_before or name not in spare or spare[name] >= n.gpus):
                    idle.append(n)
                    if len(idle) == req.nodes:
                        return {n.name: tuple(sorted(n.free)[:per]) for n in idle}
        return None

    # ---------------------------------------------------------------------- preemption
    def _victim_ok(self, P: _Pool, v: _Job, r: _Job, now: float) -> bool:
        if v.state != RUNNING or not (v.req.preemptible or P.cfg.preemptible):
            return False
        if v.preemptions >= self.p.max_preemptions_per_job or v.started_at + self.p.min_runtime > now:
            return False
        if (r.req.id, v.req.id) in self._preempted_pairs:
            return False  # v once preempted r: never the other way round (no cycles)
        if r.req.priority.rank < v.req.priority.rank:
            return True
        # under-share demand: r's user has nothing here, v's user is over its share, r fits its share
        ru, vu = self.users[r.req.user], self.users[v.req.user]
        if ru.pool_gpus.get(P.name, 0) > 0 or P.active_weight <= 0:
            return False
        fair_r = P.total * ru.weight / P.active_weight
        fair_v = P.total * vu.weight / P.active_weight
        return vu.pool_gpus.get(P.name, 0) > fair_v and r.req.gpus <= fair_r

    def _try_preempt(self, P: _Pool, r: _Job, now: float, out: list[Decision]) -> None:
        if not P.cfg.allow_preemption or self.p.preemption_budget <= 0:
            return
        if not any(P.victims_by_rank) or r.req.id in self._stopping_for:
            return  # nothing to preempt, or victims are already stopping for it
        rank = r.req.priority.rank
        if not any(P.victims_by_rank[rank + 1:]) and self.users[r.req.user].pool_gpus.get(P.name, 0) > 0:
            return  # no lower-priority victims, and the under-share rule does not apply
        if P.last_fail[0] == r.req.id and P.last_fail[1] == P.victim_epoch and now < P.last_fail[2]:
            return  # nothing changed since the last failed attempt for this job
        rate = self.p.preemption_budget / self.p.preemption_window
        P.tokens = min(self.p.preemption_budget, P.tokens + (now - P.tokens_at) * rate)
        P.tokens_at = now
        if P.tokens < 1:
            P.recheck_at = min(P.recheck_at, now + (1 - P.tokens) / rate)
            return
        req = r.req
        per = req.gpus // max(1, req.nodes)
        soonest = INF
        plans: list[tuple[tuple, str, list[_Job]]] = []
        # Only nodes holding a job that may be preempted now can give a plan; young preemptible
        # jobs elsewhere only move `soonest`. Find both from the pool's preemptible jobs.
        gain: dict[str, int] = {}  # node -> GPUs its preemptable-now jobs hold there
        min_rt = self.p.min_runtime
        nmap = P.nmap
        # only lower priorities qualify unless the under-share rule may apply
        low = rank + 1 if self.users[req.user].pool_gpus.get(P.name, 0) > 0 else 0
        cands = [vid for ids in P.victims_by_rank[low:] for vid in ids]
        for vid in cands:
            v = self.jobs.get(vid)
            if v is None or v.state != RUNNING or not v.placement:
                continue
            if self._victim_ok(P, v, r, now):
                for name, ids in v.placement.items():
                    gain[name] = gain.get(name, 0) + len(ids)
            elif v.started_at + min_rt > now:
                for name in v.placement:
                    n = nmap.get(name)
                    if n is not None and n.gpus >= per:
                        soonest = min(soonest, v.started_at + min_rt)
        for n in P.nodes:
            if n.gpus < per or n.name not in gain:
                continue
            if len(n.free) + self._stop_g.get(n.name, 0) + gain[n.name] < (per if req.nodes == 1 else n.gpus):
                continue  # even preempting every candidate there would not free enough
            jobs = [self.jobs[j] for j in sorted(self.node_jobs[n.name]) if j in self.jobs]
            stopping = self._stop_g.get(n.name, 0)
            ok, young = [], []
            for v in jobs:
                if v.state != RUNNING:
                    continue
                if self._victim_ok(P, v, r, now):
                    ok.append(v)
                elif (v.req.preemptible or P.cfg.preemptible) and v.started_at + self.p.min_runtime > now:
                    young.append(v)
            for v in young:
                soonest = min(soonest, v.started_at + self.p.min_runtime)
            ok.sort(key=lambda v: (-v.req.priority.rank, -self.users[v.req.user].key, -v.started_at, v.req.id))
            f = len(n.free) + stopping
            need = per if req.nodes == 1 else n.gpus
            chosen: list[_Job] = []
            for v in ok:
                if f >= need:
                    break
                chosen.append(v)
                f += len(v.placement.get(n.name, ())) if v.placement else 0
            if f < need or not chosen:
                continue
            if any(v.req.nodes > 1 for v in chosen):
                continue  # multi-node victims would free GPUs elsewhere too; keep it simple
            worst = min((v.req.priority.rank for v in chosen))
            cost = (-worst, sum(v.req.gpus for v in chosen), len(chosen), n.name)
            plans.append((cost, n.name, chosen))
        if len(plans) < max(1, req.nodes):
            if soonest < INF:
                P.recheck_at = min(P.recheck_at, soonest)
            P.last_fail = (req.id, P.victim_epoch, soonest)
            return
        plans.sort(key=lambda p: p[0])
        victims = [v for _, _, vs in plans[: max(1, req.nodes)] for v in vs]
        if len(victims) > P.tokens:
            return
        P.tokens -= len(victims)
        for v in victims:
            if self._limit(v.req) is None:
                P.timed_running += 1
            v.state = STOPPING
            if v.placement:
                for name, ids in v.placement.items():
                    self._stop_g[name] = self._stop_g.get(name, 0) + len(ids)
                self._touch(v.placement)
            v.preempt_for = req.id
            self._preempted_pairs.add((v.req.id, req.id))
            self._stopping_for[req.id] = self._stopping_for.get(req.id, 0) + 1
            v.stop_by = now + self.p.grace
            out.append(Preempt(v.req.id, self.p.grace, f"preempted for job {req.id} ({req.priority.value} priority, user {req.user})"))

    # ---------------------------------------------------------------------- introspection
    def _order(self, pool: str, now: float) -> list[_Job]:
        """The pool's pending jobs in scheduling order (ignoring share changes within a pass)."""
        P = self.pools[pool]
        res: list[_Job] = []
        for t in range(N_TIERS):
            st = sorted(e for h in P.aged[t].values() for e in h)
            for e in st:
                j = self.jobs.get(e[2])
                if j is not None and j.state == PENDING and j.loc_version == e[3]:
                    res.append(j)
            mine = {
                u.name: sorted(k for (p, tt, _), lst in u.lists.items() if p == pool and tt == t for k in lst)
                for u in self.users.values()
            }
            for _, name in sorted((self.users[n].key, n) for n, ks in mine.items() if ks):
                res += [self.jobs[k[2]] for k in mine[name]]
        return res

    def _position(self, pool: str, job_id: str, now: float) -> int:
        """1-based place of a pending job in its pool's order; the order is computed once and
        kept until the queue or a user's share changes, so explaining every queued job costs
        one sort, not one per job."""
        hit = self._positions.get(pool)
        if hit is None or hit[0] != self._order_epoch:
            order = {x.req.id: i for i, x in enumerate(self._order(pool, now), 1)}
            hit = self._positions[pool] = (self._order_epoch, order)
        return hit[1][job_id]

    def priority_terms(self, job_id: str, now: float) -> dict[str, float]:
        """The terms of a job's place in the order (see docs/scheduling.md)."""
        j = self.jobs[job_id]
        u = self.users[j.req.user]
        tier, aged, _ = self._tier_at(j, now) if j.state == PENDING else (j.tier, j.aged, 0)
        return {
            "tier": float(tier),
            "base_tier": float(2 * j.req.priority.rank),
            "starvation_boost": float(2 * j.req.priority.rank - tier),
            "oldest_first": 1.0 if aged else 0.0,
            "usage_gpu_hours": round(self.usage(j.req.user, now), 6),
            "weight": u.weight,
            "share_key": round(u.scaled / self._scale(now) / u.weight, 6),
            "wait_s": max(0.0, now - j.req.submit_time),
        }

    @staticmethod
    def _msg(m: Any) -> str:
        """A reason message; the pass stores the hot ones as tuples and they are formatted here."""
        if isinstance(m, str):
            return m
        if m[0] == 0:
            return f"starting now would delay the reserved start of job {m[1]}"
        _, gpus, pool, free, total, res = m
        return f"waiting for {gpus} GPUs in pool {pool!r} ({free}/{total} free) behind job {res}"

    def explain(self, job_id: str, now: float) -> Optional[Explanation]:
        """Reason code, 1-based position, priority terms and ETA of a queued job."""
        j = self.jobs.get(job_id)
        if j is None or j.state not in (PENDING, WAITING):
            return None
        terms = self.priority_terms(job_id, now)
        P = self.pools[j.req.pool]
        if j.state == WAITING:
            return Explanation(
                "backoff", f"retrying after a failure, eligible in {j.req.not_before - now:.0f}s",
                0, terms, max(0.0, j.req.not_before - now),
            )
        pos = self._position(j.req.pool, job_id, now)
        eta: Optional[float] = None
        if P.reserved_for == job_id and P.shadow < INF:
            eta = max(0.0, P.shadow - now)
        reason, msg = j.reason, self._msg(j.reason_msg)
        if j.seen != P.pass_no and reason in ("reservation", "priority", "resources"):
            # the last pass stopped before it (nothing free could fit it): not its old message
            reason, msg = "resources", f"waiting for {j.req.gpus} GPUs in pool {P.name!r} ({P.free}/{P.total} free)"
        if P.reserved_for != job_id and reason in ("new", "resources") and pos > 1:
            reason, msg = "priority", f"{pos - 1} jobs are ahead of it in pool {P.name!r}"
        elif reason == "new":
            reason, msg = "pending", "waiting for the next scheduling pass"
        return Explanation(reason, msg, pos, terms, eta)

    def snapshot(self) -> dict[str, Any]:
        """Pools with GPUs total/used and queue lengths, plus per-user GPUs held."""
        pools = {}
        for name, P in self.pools.items():
            pools[name] = {
                "gpus_total": P.total,
                "gpus_used": P.total - P.free,
                "queued": P.queued,
                "running": sum(
                    1 for j in self.jobs.values() if j.req.pool == name and j.state in (RUNNING, STOPPING)
                ),
                "reserved_for": P.reserved_for,
            }
        users = {
            n: {"gpus": u.gpus, "running": u.running, "usage_gpu_hours": round(self.usage(n, self._now), 6)}
            for n, u in sorted(self.users.items())
        }
        return {"pools": pools, "users": users}

    def export_state(self) -> dict[str, Any]:
        """JSON-ready state worth keeping across restarts: decayed usage, budgets, preemption counts."""
        now = self._now
        return {
            "version": 1,
            "at": now,
            "usage_gpu_hours": {n: self.usage(n, now) for n, u in sorted(self.users.items()) if u.scaled > 0},
            "preemption_tokens": {n: [P.tokens, P.tokens_at] for n, P in sorted(self.pools.items())},
            "job_preemptions": dict(sorted(self.preempt_counts.items())),
        }

    def import_state(self, state: dict[str, Any]) -> None:
        """Load what ``export_state`` wrote (call before restoring jobs)."""
        at = float(state.get("at", 0.0))
        self._now = max(self._now, at)
        f = self._scale(at)
        self._order_epoch += 1
        for name, usage in state.get("usage_gpu_hours", {}).items():
            u = self._user(name)
            u.scaled = float(usage) * f
            u.version += 1
            u.in_heap.clear()
        for name, (tokens, tat) in state.get("preemption_tokens", {}).items():
            if name in self.pools:
                self.pools[name].tokens = float(tokens)
                self.pools[name].tokens_at = float(tat)
        self.preempt_counts.update({k: int(v) for k, v in state.get("job_preemptions", {}).items()})
        for jid, n in self.preempt_counts.items():
            if jid in self.jobs:
                self.jobs[jid].preemptions = n
        for P in self.pools.values():
            P.uheap = [{} for _ in range(N_TIERS)]
            P.dirty = True
        for u in self.users.values():
            u.in_heap.clear()
            for (pool, tier, g), lst in u.lists.items():
                if lst:
                    self._push_user(u, pool, tier, g)
