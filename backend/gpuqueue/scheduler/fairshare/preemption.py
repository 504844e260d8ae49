"""Preemption: the planner (``plan``, a pure function of the state it is given: which running
jobs to stop so that a reserved job fits) and the step that carries a plan out within the
pool's budget (``carry_out``).

A job may be preempted for the reserved job ``r`` when it is preemptible (it opted in, or its
pool is preemptible), has run ``min_runtime``, was preempted fewer than
``max_preemptions_per_job`` times, never preempted ``r`` itself (no cycles), and either has a
strictly lower base priority than ``r``, or ``r`` is *starved* (waited past its pool's
starvation timeout) and the victim has no higher base priority or runs on GPUs it borrowed
from a starved job's reservation, or
(under-share demand) ``r``'s user holds nothing in the pool, the victim's user holds more than
its fair share ``total * w / active weight`` and ``r`` fits its own user's share. Victims:
lowest priority first, then most over share, then youngest; the nodes needing the cheapest set
of victims, among the nodes no other reservation holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Collection, Container, Iterable, Optional

from ..base import Decision, Preempt
from .ledger import User
from .nodes import NodeIndex, PoolNodes
from .pool import FailedPlan, Pool
from .records import INF, RUNNING, STOPPING, Job
from .reservations import Claims, Reservation

if TYPE_CHECKING:  # pragma: no cover
    from .policy import FairShareScheduler


NONE = (0, 0, 0)  # no preemptible GPUs of any rank on a node
FREE_NODE = (-99, 0, 0)  # the cost of a node a job of several nodes finds whole: it comes first


@dataclass(frozen=True)
class PreemptionRules:
    """What the planner needs to know besides the jobs."""

    pool: str
    pool_total: int  # GPUs of the pool's up nodes
    pool_preemptible: bool
    active_weight: float  # sum of the weights of users with jobs in the pool
    min_runtime: float
    max_preemptions: int
    preempted_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]]  # (victim, preemptor)


def under_share(pool: str, pool_total: int, active_weight: float, user: User, gpus: int) -> bool:
    """Whether the under-share rule may let a job of ``gpus`` GPUs of ``user`` preempt: the
    user holds nothing in the pool and the job fits its fair share ``pool_total × w_u / Σ w``
    (users with jobs in the pool)."""
    return (user.pool_gpus.get(pool, 0) <= 0 and active_weight > 0
            and gpus <= pool_total * user.weight / active_weight)


@dataclass
class Plan:
    """Jobs to stop (none if no plan works), and when trying again could give a plan (INF:
    not before something changes)."""

    victims: list[Job]
    retry_at: float


def may_preempt(rules: PreemptionRules, users: dict[str, User], v: Job, r: Job, now: float,
                starved: bool = False) -> bool:
    """Whether running job ``v`` may be stopped for ``r`` (``starved``: r waited past its
    pool's starvation timeout; see the module docstring)."""
    if v.state != RUNNING or not (v.request.preemptible or rules.pool_preemptible):
        return False
    if v.preemptions >= rules.max_preemptions or v.started_at + rules.min_runtime > now:
        return False
    if (r.request.id, v.request.id) in rules.preempted_pairs:
        return False  # v once preempted r: never the other way round (no cycles)
    if r.request.priority.rank < v.request.priority.rank:
        return True
    if starved and (v.borrowed or v.request.priority.rank >= r.request.priority.rank):
        return True
    # under-share demand: r's user has nothing here, r fits its share, v's user is over its own
    if not under_share(rules.pool, rules.pool_total, rules.active_weight, users[r.request.user], r.request.gpus):
        return False
    vu = users[v.request.user]
    return vu.pool_gpus.get(rules.pool, 0) > rules.pool_total * vu.weight / rules.active_weight


def plan(rules: PreemptionRules, users: dict[str, User], jobs: dict[str, Job], r: Job,
         candidates: Iterable[str], pool: PoolNodes, index: NodeIndex, now: float,
         starved: bool = False, exclude: Container[str] = (), only: Optional[Container[str]] = None) -> Plan:
    """The victims that make ``r`` fit (on one node, or on ``nodes`` whole nodes), on nodes not
    in ``exclude`` (and in ``only``, when given). ``candidates``: ids of running jobs of the
    pool, among them every job that may be preempted for ``r`` on those nodes; the young ones
    tell when to try again."""
    req = r.request
    per = req.gpus // max(1, req.nodes)
    min_runtime = rules.min_runtime
    # A young job may not be preempted yet: when the first comes of age, trying again may help.
    soonest = comes_of_age(jobs, candidates, pool, per, min_runtime, now)
    # may_preempt(v, r), inline: what depends on r alone is worked out once
    rid, rrank = req.id, req.priority.rank
    pairs, pool_preemptible = rules.preempted_pairs, rules.pool_preemptible
    max_preemptions = rules.max_preemptions
    r_under_share = under_share(rules.pool, rules.pool_total, rules.active_weight, users[req.user], req.gpus)
    pool_name, pool_total, active_weight = rules.pool, rules.pool_total, rules.active_weight
    # Only nodes holding a job that may be preempted now can give a plan (every such job of
    # the pool is a candidate: running preemptible jobs of the ranks the rules allow, or all
    # jobs on ``only``); the node index's running preemptible GPUs bound what one can free.
    preemptible_gpus, stopping_gpus, jobs_on = index.preemptible_gpus, index.stopping_gpus, index.jobs_on
    plans: list[tuple[tuple[int, int, int, str], str, list[Job]]] = []
    for n in pool.nodes:
        if n.gpus < per or n.name in exclude or (only is not None and n.name not in only):
            continue
        need = per if req.nodes == 1 else n.gpus
        stopping = stopping_gpus.get(n.name, 0)
        if req.nodes > 1 and len(n.free) + stopping >= need:
            plans.append((FREE_NODE + (n.name,), n.name, []))  # whole already (or soon): no victims
            continue
        if len(n.free) + stopping + sum(preemptible_gpus.get(n.name, NONE)) < need:
            continue  # even preempting every preemptible job there would not free enough
        gain = 0  # GPUs the jobs there that may be preempted now hold there
        ok: list[Job] = []
        young = INF
        for jid in jobs_on[n.name]:  # (in any order: ``ok`` is sorted below, ids last)
            v = jobs.get(jid)
            if v is None or v.state != RUNNING:
                continue
            vr = v.request
            if not (vr.preemptible or pool_preemptible):
                continue
            came_of_age = v.started_at + min_runtime
            if v.preemptions >= max_preemptions or came_of_age > now or (rid, vr.id) in pairs:
                may = False
            else:
                vrank = vr.priority.rank
                if rrank < vrank or starved and (v.borrowed or vrank >= rrank):
                    may = True
                elif r_under_share:  # under-share demand: v's user is over its own share
                    vu = users[vr.user]
                    may = vu.pool_gpus.get(pool_name, 0) > pool_total * vu.weight / active_weight
                else:
                    may = False
            if may:
                ok.append(v)
                gain += len(v.placement[n.name])  # type: ignore[index]
            elif came_of_age > now:
                young = min(young, came_of_age)
        if not ok or len(n.free) + stopping + gain < need:
            continue  # even preempting every candidate there would not free enough
        soonest = min(soonest, young)
        # lowest priority, then most over share, then youngest
        ok.sort(key=lambda v: v.request.id)
        ok.sort(key=lambda v: v.started_at, reverse=True)
        ok.sort(key=lambda v: users[v.request.user].share_key, reverse=True)
        ok.sort(key=lambda v: v.request.priority.rank, reverse=True)
        f = len(n.free) + stopping
        chosen: list[Job] = []
        for v in ok:
            if f >= need:
                break
            chosen.append(v)
            f += len(v.placement.get(n.name, ())) if v.placement else 0
        if f < need or not chosen:
            continue
        if any(v.request.nodes > 1 for v in chosen):
            continue  # multi-node victims would free GPUs elsewhere too; keep it simple
        worst = min(v.request.priority.rank for v in chosen)
        cost = (-worst, sum(v.request.gpus for v in chosen), len(chosen), n.name)
        plans.append((cost, n.name, chosen))
    if len(plans) < max(1, req.nodes):
        return Plan([], soonest)
    plans.sort(key=lambda p: p[0])
    victims = [v for _, _, vs in plans[: max(1, req.nodes)] for v in vs]
    return Plan(victims, soonest)


def comes_of_age(jobs: dict[str, Job], candidates: Iterable[str], pool: PoolNodes, per: int,
                 min_runtime: float, now: float) -> float:
    """When the first of ``candidates`` that is too young to be preempted and runs on a node
    of at least ``per`` GPUs comes of age (INF: none): a failed plan's time to try again."""
    soonest = INF
    by_name = pool.by_name
    for v in map(jobs.get, candidates):
        if v is None or v.started_at + min_runtime <= now or v.state != RUNNING or not v.placement:
            continue
        for name in v.placement:
            n = by_name.get(name)
            if n is not None and n.gpus >= per:
                soonest = min(soonest, v.started_at + min_runtime)
    return soonest


def could_fit(pool: PoolNodes, index: NodeIndex, r: Job, exclude: Container[str],
              only: Optional[Collection[str]], min_rank: int, pool_preemptible: bool,
              min_runtime: float, now: float, max_preemptions: Optional[int] = None,
              ) -> tuple[bool, float, bool]:
    """Whether stopping every preemptible job of priority rank ``min_rank`` or lower that has
    run ``min_runtime`` somewhere (in ``only``, when given) could make ``r`` fit: a quick bound
    that spares the planner its walk over the candidates when no plan can exist. Also returns
    when a young job that could count comes of age (INF: none; meaningful when it cannot fit),
    and, given ``max_preemptions``, whether the bound holds counting only the one-node jobs
    preempted fewer than ``max_preemptions`` times: ``plan`` gives up on a node whose chosen
    victims include a multi-node job, so where that is False it finds no plan either."""
    req = r.request
    per = req.gpus // max(1, req.nodes)
    want = max(1, req.nodes)
    single = max_preemptions is not None
    stopping, preemptible, jobs = index.stopping_gpus, index.preemptible_gpus, index.jobs
    enough = enough_single = 0
    soonest = INF
    nodes = pool.nodes if only is None else [pool.by_name[n] for n in only if n in pool.by_name]
    for n in nodes:
        if n.gpus < per or n.name in exclude:
            continue
        need = per if req.nodes == 1 else n.gpus
        base = len(n.free) + stopping.get(n.name, 0)
        held = preemptible.get(n.name, NONE)
        if base + (sum(held[min_rank:]) if min_rank else sum(held)) < need:
            continue
        base_single = base
        for jid in index.jobs_on.get(n.name, ()):
            v = jobs[jid]
            vr = v.request
            if (v.state == RUNNING and (vr.preemptible or pool_preemptible)
                    and (not min_rank or vr.priority.rank >= min_rank)):  # (every rank is >= 0)
                if v.started_at + min_runtime <= now:
                    gpus = len(v.placement[n.name])  # type: ignore[index]
                    base += gpus
                    if single and vr.nodes == 1 and v.preemptions < max_preemptions:  # type: ignore[operator]
                        base_single += gpus
                elif v.started_at + min_runtime < soonest:
                    soonest = v.started_at + min_runtime
        if base >= need:
            enough += 1
            if base_single >= need:
                enough_single += 1
            if enough >= want and (not single or enough_single >= want):
                return True, soonest, True
    return enough >= want, soonest, enough_single >= want


def carry_out(policy: "FairShareScheduler", pool: Pool, res: Reservation, claims: Claims, now: float,
              out: list[Decision]) -> None:
    """Preempt for a reserved job if the pool allows it, a plan exists (on nodes no other
    reservation holds) and the pool's budget (a token bucket) covers it: the victims are asked
    to stop (``Preempt``) and keep their GPUs until they report back."""
    knobs = policy.knobs
    r = res.job
    req = r.request
    if not pool.config.allow_preemption or knobs.preemption_budget <= 0:
        return
    if not any(pool.victims_by_rank) or req.id in policy.stopping_for:
        return  # nothing to preempt, or victims are already stopping for it
    rank = req.priority.rank
    user = policy.ledger.users[req.user]
    holds_here = user.pool_gpus.get(pool.name, 0) > 0
    # victims of r's priority or higher qualify only by the starved or the under-share rule
    may_take_share = under_share(pool.name, pool.nodes.total, pool.active_weight, user, req.gpus)
    low = 0 if res.starved or may_take_share else rank + 1
    if low and not any(pool.victims_by_rank[low:]):
        return  # no lower-priority victims, and neither other rule applies
    index = policy.node_index
    # a plan depends on the reserved job only through its shape: jobs of one shape share
    # what was learnt (the cycle rule aside, which only ever takes victims away)
    shape = (req.gpus, req.nodes, rank, holds_here, res.starved, user.weight)
    last = pool.failed_plans.get(shape)
    if last is not None and now < last.retry_at and last.signature is None:
        return  # waiting for the budget
    # what the plan depends on besides the nodes: young jobs are no victims, so new starts
    # only matter without a minimum runtime
    epoch = pool.victim_epoch if knobs.min_runtime <= 0 else 0
    exclude = frozenset([name for name, other in claims.by_node.items() if other is not res])
    only: Optional[set[str]] = None
    signature = (exclude, epoch)
    later = INF  # when nodes not looked at again may give a plan
    if last is not None and now < last.retry_at:
        if last.signature == signature:
            # no plan on any node then: only nodes that changed since can give one now
            if index.touches == last.touches:
                return
            changed = index.touched_since(last.touches, pool.nodes.by_name)
            if not changed:
                return
            if req.nodes == 1:  # (a job of several nodes may need changed and unchanged ones
                only, later = changed, last.retry_at  # together: it plans on every node)
    # with low == 0 or ``only``, the young jobs plan() meets are all candidates: see below
    single_bound = low == 0 or only is not None
    possible, young, single_fit = could_fit(
        pool.nodes, index, r, exclude, only, low, pool.config.preemptible, knobs.min_runtime, now,
        knobs.max_preemptions_per_job if single_bound else None)
    if not possible:
        if young < INF:
            pool.recheck_at = min(pool.recheck_at, young)
        pool.failed_plans[shape] = FailedPlan(signature, index.touches, min(later, young))
        return
    rate = knobs.preemption_budget / knobs.preemption_window
    pool.tokens = min(knobs.preemption_budget, pool.tokens + (now - pool.tokens_at) * rate)
    pool.tokens_at = now
    if pool.tokens < 1:
        pool.recheck_at = min(pool.recheck_at, now + (1 - pool.tokens) / rate)
        return
    rules = PreemptionRules(
        pool.name, pool.nodes.total, pool.config.preemptible, pool.active_weight,
        knobs.min_runtime, knobs.max_preemptions_per_job, policy.preempted_pairs)
    candidates: Iterable[str]
    if only is not None:  # the jobs on those nodes
        candidates = [jid for n in only for jid in index.jobs_on.get(n, ())]
    else:  # only lower priorities qualify unless the starved or under-share rule may apply
        candidates = chain.from_iterable(pool.victims_by_rank[low:])
    if single_bound and not single_fit:
        # plan() would find no victims; its time to try again is then when a candidate comes
        # of age (the young jobs it meets on the nodes it walks are all candidates here)
        per = req.gpus // max(1, req.nodes)
        found = Plan([], comes_of_age(policy.jobs, candidates, pool.nodes, per, knobs.min_runtime, now))
    else:
        found = plan(rules, policy.ledger.users, policy.jobs, r, candidates, pool.nodes,
                     index, now, res.starved, exclude, only)
    if not found.victims:
        if found.retry_at < INF:
            pool.recheck_at = min(pool.recheck_at, found.retry_at)
        pool.failed_plans[shape] = FailedPlan(signature, index.touches, min(found.retry_at, later))
        return
    victims = found.victims
    if len(victims) > pool.tokens:  # not enough budget yet: try again once there is
        at = now + (len(victims) - pool.tokens) / rate
        pool.recheck_at = min(pool.recheck_at, at)
        pool.failed_plans[shape] = FailedPlan(None, index.touches, at)
        return
    pool.tokens -= len(victims)
    stopping, preemptible = policy.node_index.stopping_gpus, policy.node_index.preemptible_gpus
    for v in victims:
        if v.limit is None:
            pool.timed_running += 1
        v.state = STOPPING
        if v.placement:
            for name, ids in v.placement.items():
                stopping[name] = stopping.get(name, 0) + len(ids)
                preemptible[name][v.request.priority.rank] -= len(ids)
            policy.node_index.touch(v.placement)
        v.preempted_for = req.id
        policy.preempted_pairs.add((v.request.id, req.id))
        policy.stopping_for[req.id] = policy.stopping_for.get(req.id, 0) + 1
        v.stop_by = v.ends_at = now + knobs.grace
        why = "waited past the starvation timeout" if res.starved else f"{req.priority.value} priority"
        out.append(Preempt(v.request.id, knobs.grace, f"preempted for job {req.id} ({why}, user {req.user})"))
