"""Reservations: for a job that does not fit now, the nodes it will start on, the *shadow time*
when it fits there (by the running jobs' end estimates), and the *spare* GPUs of those nodes
at that time. A pass holds several at once (the starved jobs', oldest first, then the first
blocked job's), each on nodes no other one holds. Backfill may use a reserved node only for a
job that ends before that reservation's shadow time, or that fits in its spare GPUs (see
``scheduling_pass.SchedulingPass.place``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from .nodes import NodeIndex, PoolNodes
from .records import INF, Job

Candidate = tuple[float, int, str, int]
"""(fit time, -free GPUs, node, node GPUs): a node a reservation may take, best first."""


@dataclass(eq=False, slots=True)
class Reservation:
    """GPUs set aside for ``job``."""

    job: Job
    starved: bool  # the job waited past its pool's starvation timeout
    ready: bool = False  # nodes, shadow and spare are planned
    shadow: float = INF  # when the job fits on its nodes (INF: unknown)
    spare: dict[str, int] = field(default_factory=dict)  # reserved node -> GPUs not needed then
    nodes: list[str] = field(default_factory=list)  # the reserved nodes

    def usable_by(self, end: float) -> bool:
        """Whether a job ending at ``end`` may use the reserved nodes freely (it ends first)."""
        return self.shadow < INF and end <= self.shadow


class Claims:
    """The reserved nodes of one pass, and the bounds that tell a job's view of them."""

    __slots__ = ("by_node", "all", "min_shadow", "max_shadow", "starved", "version")

    def __init__(self) -> None:
        self.by_node: dict[str, Reservation] = {}
        self.all: list[Reservation] = []  # in the order they were made
        # a job ending by `min_shadow` may use every reserved node; one ending after
        # `max_shadow` none (only spare GPUs): see SchedulingPass.place
        self.min_shadow = INF
        self.max_shadow = -INF
        self.starved = 0  # reservations of starved jobs (preemptible jobs may borrow their GPUs)
        self.version = 0  # bumps with every reservation added

    def __bool__(self) -> bool:
        return bool(self.by_node)

    def state(self) -> tuple:
        """A copy of what the claims hold now, for ``restore``."""
        return (self.by_node.copy(), self.all.copy(), self.min_shadow, self.max_shadow, self.starved,
                self.version)

    def restore(self, state: tuple) -> None:
        """Hold what ``state`` held (the same reservation objects), as if added in that order."""
        by_node, made, self.min_shadow, self.max_shadow, self.starved, self.version = state
        self.by_node = by_node.copy()
        self.all = made.copy()

    def add(self, res: Reservation) -> None:
        """Record a planned reservation's nodes."""
        self.all.append(res)
        self.version += 1
        spare = res.spare
        if not spare:
            return
        if res.starved:
            self.starved += 1
        by_node = self.by_node
        for name in spare:
            by_node[name] = res
        shadow = res.shadow
        if shadow < INF:
            if shadow > self.max_shadow:
                self.max_shadow = shadow
            if shadow < self.min_shadow:
                self.min_shadow = shadow
        else:
            self.min_shadow = -INF  # nobody ends before an unknown start


def plan(res: Reservation, pool: PoolNodes, index: NodeIndex, timed_running: int, now: float,
         claims: Claims) -> None:
    """Choose the reserved job's nodes among those no other reservation holds (in ``claims``)
    and fill in the shadow time and spare GPUs.

    With no running job of known end in the pool, the nodes closest to fitting are drained (the
    shadow is unknown). Otherwise a one-node job takes the node where it fits soonest; a
    multi-node job the ``nodes`` whole nodes that are idle soonest."""
    res.ready = True
    req = res.job.request
    per = req.gpus // max(1, req.nodes)
    want = max(1, req.nodes)
    taken = claims.by_node
    chosen: list[Candidate]
    if timed_running == 0:  # no end is known: the nodes closest to fitting, shadow unknown
        ranked: list[tuple[float, float, int, str, int]] = []
        for n in pool.nodes:
            if n.gpus >= per and n.name not in taken:
                need = per if req.nodes == 1 else n.gpus
                fits = len(n.free) >= need
                age = 0.0 if fits else drain_age(n.name, len(n.free), need, index, now)
                ranked.append((now if fits else INF, age, -len(n.free), n.name, n.gpus))
        ranked.sort()
        chosen = [(t, negfree, name, gpus) for t, _, negfree, name, gpus in ranked[:want]]
        res.shadow = max((c[0] for c in chosen), default=INF)
        if len(chosen) < want:
            res.shadow = INF
        res.spare = {c[2]: (0 if req.nodes > 1 else c[3] - per) for c in chosen}
        res.nodes = [c[2] for c in chosen]
    else:
        if req.nodes <= 1:
            chosen = index.soonest_node(pool, per, now, taken)
        else:
            cands = []
            for n in pool.nodes:
                if n.gpus < per or n.name in taken:
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
            res.nodes = []
        else:
            _set_spare(res, chosen, per, req.nodes > 1, index)


def drain_age(name: str, free: int, need: int, index: NodeIndex, now: float) -> float:
    """How long the oldest job that must end before ``need`` GPUs are free on the node has
    run, ending the youngest jobs first. With no end known, the node to drain is the one with
    the smallest such age: GPU job runtimes are heavy-tailed (a job that has run long is
    likely to run long yet; Tiresias' premise), so a node whose blocking jobs are young is
    likely to drain first, and one held by a job that has run for weeks is not."""
    jobs = index.jobs
    running = sorted(((j.started_at, len(j.placement.get(name, ())))
                      for j in (jobs.get(jid) for jid in index.jobs_on.get(name, ()))
                      if j is not None and j.placement), reverse=True)
    age = 0.0
    for started, gpus in running:
        if free >= need:
            break
        free += gpus
        age = now - started
    return age if free >= need else INF


class Held(NamedTuple):
    """The nodes a starved job was reserved in an earlier pass, as planned then."""

    nodes: list[str]
    versions: tuple[int, ...]  # the nodes' versions (NodeIndex.version) then
    shadow: float
    spare: dict[str, int]


def held(res: Reservation, index: NodeIndex) -> Held:
    """What to remember of a planned reservation."""
    return Held(res.nodes, tuple([index.versions.get(n, 0) for n in res.nodes]), res.shadow, dict(res.spare))


def keep(res: Reservation, before: Held, pool: PoolNodes, index: NodeIndex, now: float,
         claims: Claims) -> Optional[Held]:
    """Plan on the same nodes as in an earlier pass (a starved job keeps the nodes it drains),
    with the shadow time and spare GPUs as of now (as then, if none of them changed). Returns
    what to remember of it, or None (nothing planned) if one of them is down or already held
    in this pass (in ``claims``)."""
    nodes = before.nodes
    if not nodes:
        return None
    taken, up, version = claims.by_node, pool.by_name, index.versions
    for name in nodes:
        if name in taken or name not in up:
            return None
    res.ready = True
    versions = tuple([version.get(n, 0) for n in nodes])
    if before.shadow >= now and before.versions == versions:
        res.nodes, res.shadow, res.spare = nodes, before.shadow, dict(before.spare)
        return before
    req = res.job.request
    per = req.gpus // max(1, req.nodes)
    multi = req.nodes > 1
    chosen: list[Candidate] = []
    for name in nodes:
        n = pool.by_name[name]
        raw = index.cached_fit_time(n, n.gpus if multi else per)
        t_fit = now if raw == -INF else (INF if raw == INF else max(now, raw))
        chosen.append((t_fit, -len(n.free), name, n.gpus))
    _set_spare(res, chosen, per, multi, index)
    return Held(res.nodes, versions, res.shadow, dict(res.spare))


def _set_spare(res: Reservation, chosen: list[Candidate], per: int, multi: bool, index: NodeIndex) -> None:
    """Shadow time and spare GPUs of the chosen nodes: a multi-node job takes them whole; a
    one-node job leaves what is free at the shadow time beyond its need."""
    res.shadow = max(c[0] for c in chosen)
    res.nodes = [c[2] for c in chosen]
    res.spare = {}
    jobs = index.jobs
    for _, _, name, _ in chosen:
        if multi:
            res.spare[name] = 0
            continue
        f = len(index.node(name).free)
        for jid in index.jobs_on.get(name, ()):
            j = jobs.get(jid)
            if j is not None and j.placement and j.ends_at <= res.shadow:
                f += len(j.placement.get(name, ()))
        res.spare[name] = max(0, f - per)


def drains_blind(res: Reservation, pool: PoolNodes) -> bool:
    """Whether the reservation holds back most of a node with no known start: it drains the
    node until its jobs end, whenever that is."""
    if res.shadow < INF or not res.spare:
        return False
    req = res.job.request
    per = req.gpus // max(1, req.nodes)
    return any(2 * per >= pool.by_name[n].gpus for n in res.spare)
