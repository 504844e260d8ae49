"""The preemption planner: which running jobs to stop so that a reserved job fits. A pure
function of the state it is given; the policy carries out the plan (and keeps the budget).

A job may be preempted for the reserved job ``r`` when it is preemptible (it opted in, or its
pool is preemptible), has run ``min_runtime``, was preempted fewer than
``max_preemptions_per_job`` times, never preempted ``r`` itself (no cycles), and either has a
strictly lower base priority than ``r``, or (under-share demand) ``r``'s user holds nothing in
the pool, the victim's user holds more than its fair share ``total * w / active weight`` and
``r`` fits its own user's share. Victims: lowest priority first, then most over share, then
youngest; the nodes needing the cheapest set of victims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .ledger import User
from .nodes import NodeIndex, PoolNodes
from .records import INF, RUNNING, Job


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


@dataclass
class Plan:
    """Jobs to stop (none if no plan works), and when trying again could give a plan (INF:
    not before something changes)."""

    victims: list[Job]
    retry_at: float


def may_preempt(rules: PreemptionRules, users: dict[str, User], v: Job, r: Job, now: float) -> bool:
    """Whether running job ``v`` may be stopped for ``r`` (see the module docstring)."""
    if v.state != RUNNING or not (v.request.preemptible or rules.pool_preemptible):
        return False
    if v.preemptions >= rules.max_preemptions or v.started_at + rules.min_runtime > now:
        return False
    if (r.request.id, v.request.id) in rules.preempted_pairs:
        return False  # v once preempted r: never the other way round (no cycles)
    if r.request.priority.rank < v.request.priority.rank:
        return True
    # under-share demand: r's user has nothing here, v's user is over its share, r fits its share
    ru, vu = users[r.request.user], users[v.request.user]
    if ru.pool_gpus.get(rules.pool, 0) > 0 or rules.active_weight <= 0:
        return False
    fair_r = rules.pool_total * ru.weight / rules.active_weight
    fair_v = rules.pool_total * vu.weight / rules.active_weight
    return vu.pool_gpus.get(rules.pool, 0) > fair_v and r.request.gpus <= fair_r


def plan(rules: PreemptionRules, users: dict[str, User], jobs: dict[str, Job], r: Job,
         candidates: Iterable[str], pool: PoolNodes, index: NodeIndex, now: float) -> Plan:
    """The victims that make ``r`` fit (on one node, or on ``nodes`` whole nodes), chosen among
    ``candidates`` (ids of running preemptible jobs of the pool)."""
    req = r.request
    per = req.gpus // max(1, req.nodes)
    min_runtime = rules.min_runtime
    soonest = INF
    # Only nodes holding a job that may be preempted now can give a plan; young preemptible
    # jobs elsewhere only move `soonest`.
    gain: dict[str, int] = {}  # node -> GPUs its preemptable-now jobs hold there
    by_name = pool.by_name
    for vid in candidates:
        v = jobs.get(vid)
        if v is None or v.state != RUNNING or not v.placement:
            continue
        if may_preempt(rules, users, v, r, now):
            for name, ids in v.placement.items():
                gain[name] = gain.get(name, 0) + len(ids)
        elif v.started_at + min_runtime > now:
            for name in v.placement:
                n = by_name.get(name)
                if n is not None and n.gpus >= per:
                    soonest = min(soonest, v.started_at + min_runtime)
    plans: list[tuple[tuple[int, int, int, str], str, list[Job]]] = []
    for n in pool.nodes:
        if n.gpus < per or n.name not in gain:
            continue
        need = per if req.nodes == 1 else n.gpus
        stopping = index.stopping_gpus.get(n.name, 0)
        if len(n.free) + stopping + gain[n.name] < need:
            continue  # even preempting every candidate there would not free enough
        ok: list[Job] = []
        for v in (jobs[j] for j in sorted(index.jobs_on[n.name]) if j in jobs):
            if v.state != RUNNING:
                continue
            if may_preempt(rules, users, v, r, now):
                ok.append(v)
            elif (v.request.preemptible or rules.pool_preemptible) and v.started_at + min_runtime > now:
                soonest = min(soonest, v.started_at + min_runtime)
        ok.sort(key=lambda v: (-v.request.priority.rank, -users[v.request.user].share_key,
                               -v.started_at, v.request.id))
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
    return Plan([v for _, _, vs in plans[: max(1, req.nodes)] for v in vs], soonest)
