"""The fair-share policy object: events in (submit, started, finished, cancel, node up/down,
tick), decisions out. It keeps the jobs and drives the parts that own the rest: the usage
ledger (``ledger``), each pool's pending queue (``queue``) and node index (``nodes``), the pass
(``scheduling_pass``), reservations, the preemption planner and explanations.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace
from typing import Any, Optional

from ...queue.config import PoolConfig, QueueConfig
from ...queue.states import Outcome
from ..admission import inadmissible
from ..base import (
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
    Warn,
)
from ..cluster import Cluster, NodeState
from . import ordering, preemption, quotas
from .explain import Explainer
from .ledger import UsageLedger, User
from .nodes import NodeIndex, PoolNodes
from .ordering import tier_at
from .pool import Pool
from .queue import PoolQueue
from .regroup import regroup
from .reservations import Claims, Reservation
from .records import (
    INF,
    PENDING,
    RUNNING,
    STOPPING,
    WAITING,
    Job,
    JobClass,
    class_key,
)
from .scheduling_pass import SchedulingPass
from .state import export_state, import_state, pending_summary, snapshot
from .timers import TIMEOUT, WARN, Timers



class FairShareScheduler:
    """The gpuqueue policy (see the package docstring and docs/scheduling.md)."""

    def __init__(self, config: QueueConfig, cluster: Optional[Cluster] = None):
        self.config = config
        self.knobs = config.policy
        self.cluster = cluster or Cluster.from_config(config)
        self.jobs: dict[str, Job] = {}
        groups = {name: (g.weight, True) for name, g in config.groups.items()}
        self.ledger = UsageLedger(self.knobs.half_life, config.limits_for,
                                  self._renormalized, groups)
        self.node_index = NodeIndex(self.jobs)
        self.pools: dict[str, Pool] = {}
        self.explainer = Explainer(self)
        self.order_epoch = 0  # bumps when any pool's order may change (explanations cache on it)
        self._seq = 0
        self._now = 0.0
        self.timers = Timers()
        self.preempt_counts: dict[str, int] = {}
        self.stopping_for: dict[str, int] = {}  # preemptor -> victims still stopping for it
        self.preempted_pairs: set[tuple[str, str]] = set()  # (victim, preemptor)
        self._limits: dict[tuple[str, Optional[float]], Optional[float]] = {}
        self.quota_bound: dict[tuple[User, Pool], bool] = {}  # see quota_reason
        for name, pc in config.pools.items():
            self._add_pool(name, pc)
        self._rebuild_pools()

    # ---------------------------------------------------------------- bookkeeping helpers
    def _add_pool(self, name: str, pc: PoolConfig) -> Pool:
        nodes = self.node_index.pools.get(name)
        if nodes is None:
            nodes = self.node_index.pools[name] = PoolNodes(name)
        pool = self.pools[name] = Pool(name, pc, PoolQueue(), nodes, tokens=self.knobs.preemption_budget)
        return pool

    def _rebuild_pools(self) -> None:
        for n in sorted(self.cluster.nodes.values(), key=lambda n: n.name):
            if n.pool not in self.pools:
                self._add_pool(n.pool, PoolConfig(nodes={n.name: n.gpus}))
        self.node_index.rebuild(self.cluster.nodes.values())
        for pool in self.pools.values():
            pool.dirty = True
            pool.freed_epoch += 1

    def _user(self, req: JobRequest) -> User:
        u = self.ledger.users.get(req.user)
        if u is not None:
            return u
        return self.ledger.user(req.user, self.group_name(req))

    def group_name(self, req: JobRequest) -> Optional[str]:
        """The job's group as the config knows it: the one its record holds (``""``: none),
        else by the config's members."""
        return req.group if req.group is not None else self.config.group_of(req.user)

    def _regroup(self, u: User, req: JobRequest, now: float, restoring: bool) -> None:
        """A job of the user arrived with its group: see ``regroup.regroup``."""
        regroup(self, u, req, now, restoring)

    def _charge(self, u: User, scaled: float) -> None:
        """Add to (or refund from) a user's usage. Its share key (or its whole group's) changes
        wherever it has pending jobs; the user heaps follow lazily (``PoolQueue.refresh``). No
        pass is due for it alone: a new order matters when GPUs free up or jobs arrive."""
        if self.ledger.add(u, scaled):
            self.order_epoch += 1

    def _renormalized(self, factor: float) -> None:
        """The ledger moved its decay origin: per-job charges and user heaps follow."""
        self.order_epoch += 1
        for j in self.jobs.values():
            j.charged_scaled /= factor
        for pool in self.pools.values():
            pool.queue.rebuild_user_heaps(self.ledger.users)

    def usage(self, user: str, now: float) -> float:
        """The user's decayed GPU-hours as of ``now`` (charges ahead included)."""
        return self.ledger.usage(user, now)

    def limit(self, req: JobRequest) -> Optional[float]:
        """The job's runtime limit in seconds, or None: min(job time limit or the pool's
        default_timeout, the pool's max_runtime); a limit that is not a finite number counts as
        none, so every structure agrees on it."""
        key = (req.pool, req.time_limit)
        lim = self._limits.get(key, -1.0)
        if lim != -1.0:
            return lim
        pc = self.pools[req.pool].config
        lim = req.time_limit if req.time_limit is not None else pc.default_timeout
        if lim is not None and not math.isfinite(lim):
            lim = None
        if pc.max_runtime is not None and math.isfinite(pc.max_runtime):
            lim = pc.max_runtime if lim is None else min(lim, pc.max_runtime)
        self._limits[key] = lim
        return lim

    def job_class(self, job: Job) -> JobClass:
        """(GPUs, nodes, time limit or INF, preemptible): preemptible when the job is of a
        preemptible kind and has not been preempted ``max_preemptions_per_job`` times yet."""
        req = job.request
        lim = job.limit
        return (req.gpus, req.nodes, INF if lim is None else lim,
                (req.preemptible or self.pools[req.pool].config.preemptible)
                and job.preemptions < self.knobs.max_preemptions_per_job)

    def tier_at(self, job: Job, now: float) -> tuple[int, float]:
        """(tier, next change of place): see ``ordering.tier_at``."""
        req = job.request
        return tier_at(req, self.pools[req.pool].config.starvation_timeout, job.starve_after, self.knobs, now)

    def starve_after(self, req: JobRequest) -> float:
        """Seconds after which the job starves (0: never): see ``ordering.starve_after``."""
        if not self.knobs.reservations:
            return 0.0
        return ordering.starve_after(req, self.pools[req.pool].config.starvation_timeout, self.knobs)

    def _count_pool_job(self, u: User, pool: str, delta: int) -> None:
        before = u.pool_jobs.get(pool, 0)
        after = before + delta
        u.pool_jobs[pool] = after
        p = self.pools[pool]
        if before == 0 and after > 0:
            p.active_weight += u.weight
        elif before > 0 and after == 0:
            p.active_weight -= u.weight

    # ------------------------------------------------------------------- queue in / out
    def _enqueue(self, job: Job, now: float, boost: bool = False) -> None:
        """Put a job (new, retried or requeued) into its pool's queue or the backoff heap.
        ``boost``: it moves up a tier or starves; a pass is due only if it starves."""
        req = job.request
        job.queue_version += 1
        if req.not_before > now:
            job.state = WAITING
            self.timers.retry_at(job, req.not_before)
            return
        job.state = PENDING
        self.order_epoch += 1
        pool = self.pools[req.pool]
        after = job.starve_after
        starved = ordering.starved(req, after, now)
        if starved:
            pool.starved_epoch += 1
        if not boost or starved and not job.starved:
            pool.dirty = True
        job.starved = starved
        pc, knobs, lim = pool.config, self.knobs, job.limit
        # self.job_class(job) and self.tier_at(job, now), inline
        cls = job.job_class = (req.gpus, req.nodes, INF if lim is None else lim,
                               (req.preemptible or pc.preemptible)
                               and job.preemptions < knobs.max_preemptions_per_job)
        queue = pool.queue
        queue.count_class(cls, +1)
        tier, nxt = tier_at(req, pc.starvation_timeout, after, knobs, now)
        job.tier = tier
        u = self.ledger.users.get(req.user)
        queue.add(job, u if u is not None else self._user(req), tier, class_key(cls), after > 0)
        if nxt < INF:
            self.timers.boost_at(job, nxt)

    def _dequeue(self, job: Job) -> None:
        """Take a pending job out of the queue structures (the age heap is lazy)."""
        self.order_epoch += 1
        req = job.request
        pool = self.pools[req.pool]
        if ordering.starved(req, job.starve_after, self._now):
            pool.starved_epoch += 1
        queue = pool.queue
        cls = job.job_class  # as filed
        queue.count_class(cls, -1)
        queue.remove(job, job.tier, class_key(cls))
        job.queue_version += 1

    # --------------------------------------------------------------------------- events
    def submit(self, job: JobRequest, now: float, restoring: bool = False) -> Optional[Reject]:
        """Accept a job into its pool's queue, or say why not (admission and depth limits)."""
        self._now = max(self._now, now)
        if job.id in self.jobs:
            if not restoring:
                return Reject(job.id, f"job {job.id!r} is already queued or running")
            self._forget(job.id, now)
        why = inadmissible(job, self.config)
        if why and not restoring:
            return Reject(job.id, why)
        if job.pool not in self.pools:
            return Reject(job.id, why or f"unknown pool {job.pool!r}")
        pool = self.pools[job.pool]
        if not restoring:
            group = name = None
            if self.ledger.hierarchical:  # the job's group: its user's from now on (_regroup)
                name = self.group_name(job)
                group = self.ledger.groups.get(name) if name is not None else None
            refused = quotas.refusal(self.config, pool, self.ledger.users.get(job.user), name, group, job)
            if refused is not None:
                return Reject(job.id, refused)
        self._seq += 1
        j = Job(job, self._seq, preemptions=self.preempt_counts.get(job.id, 0), limit=self.limit(job),
                starve_after=self.starve_after(job))
        self.jobs[job.id] = j
        u = self._user(job)
        self._regroup(u, job, now, restoring)
        before = u.pool_jobs.get(job.pool, 0)  # _count_pool_job(u, job.pool, +1), inline
        u.pool_jobs[job.pool] = before + 1
        if before == 0:
            pool.active_weight += u.weight
        pool.queue.queued += 1
        self._enqueue(j, now)
        return None

    def restore_running(self, job: JobRequest, placement: Placement, started_at: float) -> None:
        """At rebuild: this job already holds these GPUs (its charges are in the imported state).
        RuntimeError or KeyError, and nothing kept, if the placement is not in the cluster now."""
        if job.id in self.jobs:
            self._forget(job.id, started_at)
        self._seq += 1
        j = Job(job, self._seq, state=RUNNING, limit=self.limit(job), starve_after=self.starve_after(job))
        self.jobs[job.id] = j
        u = self._user(job)
        self._regroup(u, job, self._now, restoring=True)
        self._count_pool_job(u, job.pool, +1)
        try:
            self._occupy(j, placement, started_at)
        except (RuntimeError, KeyError):  # its GPUs are not in the config now: not held, not known
            self._drop(j)
            raise
        elapsed = max(0.0, self._now - started_at)
        chunk = self.knobs.charge_ahead
        j.charged_until = (math.floor(elapsed / chunk) + 1) * chunk if chunk > 0 else elapsed
        j.charged_scaled = job.gpus * j.charged_until / 3600.0 * self.ledger.scale(started_at)
        if chunk > 0:
            self.timers.charge_at(j, started_at + j.charged_until)
        self._push_deadlines(j)

    def started(self, job_id: str, now: float) -> None:
        """The job process is confirmed running: its runtime clock (time limit) restarts now."""
        j = self.jobs.get(job_id)
        if j is None or j.state != RUNNING:
            return
        j.started_at = now
        j.ends_at = INF if j.limit is None else now + j.limit
        j.warned = False
        if j.placement:
            self.node_index.touch(j.placement)
        self._push_deadlines(j)

    def finished(self, job_id: str, outcome: Outcome, now: float) -> list[Decision]:
        """An attempt ended: free its GPUs, true up its charge, and requeue or retry it (a
        FAILED attempt while retries are left; never one that CANNOT_START)."""
        self._now = max(self._now, now)
        j = self.jobs.get(job_id)
        if j is None or j.state not in (RUNNING, STOPPING):
            return []
        self._vacate(j, now)
        req = j.request
        if outcome in (Outcome.PREEMPTED, Outcome.LOST):
            if outcome == Outcome.PREEMPTED:
                j.preemptions += 1
                self.preempt_counts[job_id] = j.preemptions
            j.request = replace(req, not_before=now)
            self._requeue(j, now)
            # not the reason of the pass that started it ("started"): it waits again, and why
            what = "preempted" if outcome == Outcome.PREEMPTED else "its node was lost"
            j.reason, j.reason_message = "requeued", f"{what}; queued again, waiting for the next scheduling pass"
            j.seen_in_pass = self.pools[req.pool].pass_no
            return [Retry(job_id, now, counted=False)]
        if outcome == Outcome.FAILED and req.failures < req.max_retries:
            at = now + self.backoff(req.id, req.failures)
            j.request = replace(req, failures=req.failures + 1, not_before=at)
            self._requeue(j, now)
            return [Retry(job_id, at, counted=True)]
        self._drop(j)
        return []

    def backoff(self, job_id: str, failures: int) -> float:
        """Seconds before retry number ``failures + 1``: exponential, capped, with hashed jitter."""
        base = min(self.config.retry_backoff * 2.0**failures, self.config.retry_backoff_max)
        h = zlib.crc32(f"{job_id}:{failures}".encode()) / 0xFFFFFFFF  # in [0, 1]
        return base * (1.0 + self.knobs.retry_jitter * (2.0 * h - 1.0))

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
            self.pools[j.request.pool].queue.queued -= 1
        else:
            j.queue_version += 1
            self.pools[j.request.pool].queue.queued -= 1
        self._drop(j)

    def _drop(self, j: Job) -> None:
        req = j.request
        pool = self.pools[req.pool]
        pool.reservations.pop(req.id, None)
        pool.held.pop(req.id, None)
        self._count_pool_job(self.ledger.users[req.user], req.pool, -1)
        del self.jobs[req.id]
        self.preempt_counts.pop(req.id, None)

    def _requeue(self, j: Job, now: float) -> None:
        self.pools[j.request.pool].queue.queued += 1
        self._enqueue(j, now)

    def node_up(self, node: str, pool: str, gpus: int, now: float) -> None:
        """A node joined or came back (with all its GPUs free)."""
        self._now = max(self._now, now)
        old = self.cluster.nodes.get(node)
        if old is not None and old.up:
            self.node_down(node, now)  # jobs there are lost; the shell hears via finished()
        self.cluster.nodes[node] = NodeState(node, pool, gpus, up=True)
        self.node_index.jobs_on[node] = set()
        self._rebuild_pools()

    def node_down(self, node: str, now: float) -> list[Decision]:
        """A node is gone: its jobs are lost (not failures) and requeued; Retry for each."""
        self._now = max(self._now, now)
        out: list[Decision] = []
        for job_id in sorted(self.node_index.jobs_on.get(node, ())):
            out += self.finished(job_id, Outcome.LOST, now)
        n = self.cluster.nodes.get(node)
        if n is not None:
            n.up = False
            n.free = set()
        self._rebuild_pools()
        return out

    def node_cordon(self, node: str, now: float) -> None:
        """No job starts on ``node`` any more (its worker is stopping); its jobs go on. It is out
        of its pool as a down node is (GPUs its jobs free are not given back), but its jobs stay
        filed there until they end or ``node_down``."""
        self._now = max(self._now, now)
        n = self.cluster.nodes.get(node)
        if n is None or not n.up:
            return
        n.up = False
        n.free = set()
        self._rebuild_pools()

    # --------------------------------------------------------------- occupy / vacate GPUs
    def _occupy(self, j: Job, placement: Placement, now: float) -> None:
        self.cluster.allocate(placement)
        req = j.request
        gpus = req.gpus
        pool = self.pools[req.pool]
        pool.nodes.free -= gpus
        j.state = RUNNING
        j.placement = placement
        j.started_at = now
        lim = j.limit
        j.ends_at = INF if lim is None else now + lim
        j.attempt += 1
        j.warned = j.timeout_sent = False
        j.preempted_for = None
        self.node_index.add_job(j, placement)
        u = self.ledger.users[req.user]
        u.gpus += gpus
        u.running += 1
        g = u.group
        if g is not None:
            g.gpus += gpus
            g.running += 1
        pool_gpus = u.pool_gpus
        pool_gpus[req.pool] = pool_gpus.get(req.pool, 0) + gpus
        if req.preemptible or pool.config.preemptible:
            rank = req.priority.rank
            pool.victims_by_rank[rank].add(req.id)
            pool.victim_epoch += 1
            held = self.node_index.preemptible_gpus
            for node, ids in placement.items():
                held.setdefault(node, [0, 0, 0])[rank] += len(ids)
        if lim is not None:
            pool.timed_running += 1

    def _vacate(self, j: Job, now: float) -> None:
        req = j.request
        pool = self.pools[req.pool]
        assert j.placement is not None
        placement = j.placement
        index = self.node_index
        preemptible = req.preemptible or pool.config.preemptible
        stopping = j.state == STOPPING
        if stopping:
            stopping_gpus = index.stopping_gpus
            for node, ids in placement.items():
                stopping_gpus[node] -= len(ids)
        elif preemptible:
            rank = req.priority.rank
            held = index.preemptible_gpus
            for node, ids in placement.items():
                held[node][rank] -= len(ids)
        nodes = self.cluster.nodes
        freed = 0
        for node, ids in placement.items():  # Cluster.release, counting what comes back
            n = nodes.get(node)
            if n is not None and n.up:
                freed += len(ids)
                n.free.update(ids)
        pool.nodes.free += freed
        index.remove_job(j, placement)
        j.placement = None
        j.borrowed = False
        gpus = req.gpus
        u = self.ledger.users[req.user]
        u.gpus -= gpus
        u.running -= 1
        g = u.group
        if g is not None:
            g.gpus -= gpus
            g.running -= 1
        u.pool_gpus[req.pool] -= gpus
        actual = gpus * max(0.0, now - j.started_at) / 3600.0 * self.ledger.scale(now)
        self._charge(u, actual - j.charged_scaled)
        j.charged_scaled = 0.0
        j.charged_until = 0.0
        if preemptible:
            pool.victims_by_rank[req.priority.rank].discard(req.id)
        if j.limit is not None or stopping:
            pool.timed_running -= 1
        if stopping and j.preempted_for is not None:
            self.stopping_for[j.preempted_for] -= 1
            if not self.stopping_for[j.preempted_for]:
                del self.stopping_for[j.preempted_for]
        j.preempted_for = None
        pool.freed_epoch += 1
        for p in self.pools.values():
            p.dirty = True  # freed GPUs here; freed quota everywhere

    def start(self, j: Job, placement: Placement, now: float, out: list[Decision]) -> None:
        """Start a pending job on ``placement``: charge its first chunk, arm its timers."""
        self._dequeue(j)
        req = j.request
        pool = self.pools[req.pool]
        pool.held.pop(req.id, None)
        pool.queue.queued -= 1
        self._occupy(j, placement, now)
        j.reason, j.reason_message = "running", "started"
        knobs = self.knobs
        chunk = knobs.charge_ahead
        lim = j.limit
        first = chunk if lim is None else min(chunk, lim)
        timers = self.timers
        if chunk > 0:
            j.charged_until = first
            scaled = req.gpus * first / 3600.0 * self.ledger.scale(now)
            j.charged_scaled = scaled
            self._charge(self.ledger.users[req.user], scaled)
            if lim is None or first < lim:
                timers.charge_at(j, now + first)
        if lim is not None:  # _push_deadlines, inline (started_at is now)
            timers.limit_at(j, j.started_at + lim, min(knobs.timeout_warning, 0.1 * lim))
        out.append(Start(req.id, placement))

    def _push_deadlines(self, j: Job) -> None:
        lim = j.limit
        if lim is None:
            return
        self.timers.limit_at(j, j.started_at + lim, min(self.knobs.timeout_warning, 0.1 * lim))

    # ------------------------------------------------------------------------------ tick
    def tick(self, now: float) -> list[Decision]:
        """One scheduling pass: timeouts and warnings, boosts, retries due, starts, preemptions."""
        self._now = max(self._now, now)
        self.ledger.renormalize(now)
        out: list[Decision] = []
        self._timers(now, out)
        for pool in self.pools.values():
            if pool.recheck_at <= now:
                pool.recheck_at = INF
                pool.dirty = True
            if pool.dirty:
                SchedulingPass(self, pool, now, out).run()
                pool.dirty = False  # the pass saw every change, its own starts included
        return out

    def _timers(self, now: float, out: list[Decision]) -> None:
        jobs, timers, due = self.jobs, self.timers, Timers.due
        # (each heap's top is looked at first: most ticks find nothing due in most heaps)
        if timers.deadlines and timers.deadlines[0][0] <= now:
            self._deadlines_due(now, out)
        if timers.charges and timers.charges[0][0] <= now:
            self._charges_due(now)
        if timers.retries and timers.retries[0][0] <= now:
            for _, _, jid, version in due(timers.retries, now):
                j = jobs.get(jid)
                if j is not None and j.state == WAITING and j.queue_version == version:
                    self._enqueue(j, now)
        if timers.boosts and timers.boosts[0][0] <= now:
            for _, _, jid, version in due(timers.boosts, now):
                j = jobs.get(jid)
                if j is not None and j.state == PENDING and j.queue_version == version:
                    self._dequeue(j)
                    self._enqueue(j, now, boost=True)

    def _deadlines_due(self, now: float, out: list[Decision]) -> None:
        jobs = self.jobs
        for t, _, jid, attempt, kind in Timers.due(self.timers.deadlines, now):
            j = jobs.get(jid)
            if j is None or j.state not in (RUNNING, STOPPING) or j.attempt != attempt:
                continue
            lim = j.limit
            if lim is None:
                continue
            end = j.started_at + lim
            if kind == WARN and not j.warned and not j.timeout_sent and t <= end:
                if abs((end - min(self.knobs.timeout_warning, 0.1 * lim)) - t) < 1e-6:
                    j.warned = True
                    left = end - now  # a short limit warns under a second ahead ("in 0s" read as a bug)
                    when = f"in {left:.0f}s" if left >= 1 else "in less than a second"
                    out.append(Warn(jid, f"the time limit comes {when}: save a checkpoint"))
            elif kind == TIMEOUT and not j.timeout_sent and abs(end - t) < 1e-6:
                j.timeout_sent = True
                out.append(TimeOut(jid))

    def _charges_due(self, now: float) -> None:
        jobs, timers = self.jobs, self.timers
        for t, _, jid, attempt, _ in Timers.due(timers.charges, now):
            j = jobs.get(jid)
            if j is None or j.state not in (RUNNING, STOPPING) or j.attempt != attempt:
                continue
            lim = j.limit
            nxt = j.charged_until + self.knobs.charge_ahead
            if lim is not None:
                nxt = min(nxt, lim)
            add = j.request.gpus * (nxt - j.charged_until) / 3600.0 * self.ledger.scale(t)
            j.charged_until = nxt
            j.charged_scaled += add
            self._charge(self.ledger.users[j.request.user], add)
            if lim is None or nxt < lim:
                timers.charge_at(j, j.started_at + nxt)

    def next_wakeup(self) -> Optional[float]:
        """The earliest time at which ``tick`` has work (timeouts, boosts, retries, usage
        charges, preemption rechecks, or events since the last pass: then the latest time
        seen); None if there is none. Shells should tick then."""
        best = self.timers.earliest(self.jobs)
        for p in self.pools.values():
            if p.dirty and p.queue:  # something changed since the last pass: tick again now
                t = self._now
                if best is None or t < best:
                    best = t
            t = p.recheck_at
            if t < INF and (best is None or t < best):
                best = t
        return best

    # ---------------------------------------------------------------------- the pass's calls
    def quota_reason(self, pool: Pool, req: JobRequest) -> Optional[tuple[str, str]]:
        """(reason code, message) when starting the job now would break a quota, else None."""
        u = self.ledger.users[req.user]
        key = (u, pool)
        bound = self.quota_bound.get(key)
        if bound is None:
            bound = self.quota_bound[key] = quotas.bounded(self.config, pool, u)
        if not bound:
            return None  # no quota applies to this user (or its group) in this pool
        return quotas.over_quota(self.config, pool, u, req)

    def try_preempt(self, pool: Pool, res: Reservation, claims: Claims, now: float, out: list[Decision]) -> None:
        """Preempt for a reserved job if the pool allows it: see ``preemption.carry_out``."""
        preemption.carry_out(self, pool, res, claims, now, out)

    # ---------------------------------------------------------------------- introspection
    def priority_terms(self, job_id: str, now: float) -> dict[str, float]:
        """The terms of a job's place in the order (see docs/scheduling.md)."""
        return self.explainer.priority_terms(job_id, now)

    def explain(self, job_id: str, now: float) -> Optional[Explanation]:
        """Reason code, 1-based position, priority terms and ETA of a queued job."""
        return self.explainer.explain(job_id, now)

    def snapshot(self) -> dict[str, Any]:
        """Pools with GPUs total/used and queue lengths, plus per-user GPUs held."""
        return snapshot(self)

    def pending_summary(self, now: float) -> dict[str, PoolPending]:
        """Per pool: the waiting jobs by priority, and how many are past their retry backoff."""
        return pending_summary(self, now)

    def node_views(self) -> list[NodeView]:
        """Every node, up or down, by name."""
        return [NodeView(n.name, n.pool, n.gpus, len(n.free), n.up)
                for n in sorted(self.cluster.nodes.values(), key=lambda n: n.name)]

    def export_state(self) -> dict[str, Any]:
        """JSON-ready state worth keeping across restarts (``state.export_state``)."""
        return export_state(self)

    def import_state(self, state: dict[str, Any]) -> None:
        """Load what ``export_state`` wrote (call before restoring jobs)."""
        import_state(self, state)
