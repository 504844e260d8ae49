"""Reservations: for a job that does not fit now, the nodes it will start on, the *shadow time*
when it fits there (by the running jobs' end estimates), and the *spare* GPUs of those nodes
at that time. Backfill may use a reserved node only for a job that ends before the shadow time
or fits in the spare GPUs (see ``scheduling_pass.place``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from .nodes import NodeIndex, PoolNodes
from .records import INF, Job

Candidate = tuple[float, int, str, int]
"""(fit time, -free GPUs, node, node GPUs): a node a reservation may take, best first."""


@dataclass
class Reservation:
    """GPUs set aside for ``job``: planned lazily, when a later job first wants to start."""

    job: Job
    ready: bool = False  # nodes, shadow and spare are planned
    shadow: float = INF  # when the job fits on its nodes (INF: unknown)
    spare: dict[str, int] = field(default_factory=dict)  # reserved node -> GPUs not needed then


def plan(res: Reservation, pool: PoolNodes, index: NodeIndex, timed_running: int, now: float) -> None:
    """Choose the reserved job's nodes and fill in the shadow time and spare GPUs.

    With no running job of known end in the pool, the nodes closest to fitting are drained (the
    shadow is unknown). Otherwise a one-node job takes the node where it fits soonest; a
    multi-node job the ``nodes`` whole nodes that are idle soonest."""
    res.ready = True
    req = res.job.request
    per = req.gpus // max(1, req.nodes)
    want = max(1, req.nodes)
    if timed_running == 0:  # no end is known: the nodes closest to fitting, shadow unknown
        cands: list[Candidate] = []
        for n in pool.nodes:
            if n.gpus >= per:
                need = per if req.nodes == 1 else n.gpus
                cands.append((now if len(n.free) >= need else INF, -len(n.free), n.name, n.gpus))
        cands.sort()
        chosen = cands[:want]
        res.shadow = max((c[0] for c in chosen), default=INF)
        if len(chosen) < want:
            res.shadow = INF
        res.spare = {c[2]: (0 if req.nodes > 1 else c[3] - per) for c in chosen}
        return
    if req.nodes <= 1:
        chosen = index.soonest_node(pool, per, now)
    else:
        cands = []
        for n in pool.nodes:
            if n.gpus < per:
                continue
            raw = index.cached_fit_time(n, n.gpus)
            # raw: -INF fits now, INF never (by known ends), else the end that makes it fit
            t_fit = now if raw == -INF else (INF if raw == INF else max(now, raw))
            cands.append((t_fit, -len(n.free), n.name, n.gpus))
        cands.sort()
        chosen = cands[:want]
    if len(chosen) < want:
        res.shadow = INF
        res.spare = {}
        return
    _set_spare(res, chosen, per, req.nodes > 1, index)


def _set_spare(res: Reservation, chosen: list[Candidate], per: int, multi: bool, index: NodeIndex) -> None:
    """Shadow time and spare GPUs of the chosen nodes: a multi-node job takes them whole; a
    one-node job leaves what is free at the shadow time beyond its need."""
    res.shadow = max(c[0] for c in chosen)
    res.spare = {}
    jobs = index.jobs
    for _, _, name, _ in chosen:
        if multi:
            res.spare[name] = 0
            continue
        f = len(index.node(name).free)
        for jid in index.jobs_on.get(name, ()):
            j = jobs.get(jid)
            if j is not None and j.placement and index.end_estimate(j) <= res.shadow:
                f += len(j.placement.get(name, ()))
        res.spare[name] = max(0, f - per)
