"""Trace-driven simulator: replays a job trace through the very scheduler the service uses.

``gpuqueue simulate TRACE.csv --cluster prod=64x8[,dev=2x1] [--config FILE]
[--policy gpuqueue|fifo] [--json OUT] [--plot OUT.png]``

Event-driven: submissions and finishes are events; the scheduler is ticked at every event time
and at its own ``next_wakeup``. The scheduler never sees durations: the simulator alone knows
when a job ends. Metric definitions are in docs/scheduling.md.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from operator import truediv
from typing import Any, Iterable, Mapping, Optional

from .queue.config import PoolConfig, QueueConfig, UserLimits, load_config
from .queue.errors import GPUQueueError
from .scheduler import make_scheduler
from .scheduler.base import JobRequest, Preempt, Reject, Start, TimeOut
from .queue.states import Outcome, Priority

REQUIRED = ("job_id", "user", "submit_time", "duration", "gpus")
OPTIONAL = ("priority", "pool", "preemptible", "time_limit")
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": None}


class TraceError(ValueError):
    """A bad trace row or argument: the message names the line and the fix."""


@dataclass
class SimJob:
    """One trace row plus what happened to it."""

    id: str
    user: str
    submit: float
    duration: float
    gpus: int
    priority: Priority
    pool: str
    preemptible: bool
    time_limit: Optional[float]
    remaining: float = 0.0
    run_s: float = 0.0
    start: Optional[float] = None  # current attempt's start
    attempt: int = 0
    end: Optional[float] = None
    outcome: str = ""
    rejected: str = ""
    preemptions: int = 0
    stopping: bool = False
    placement: Optional[dict[str, tuple[int, ...]]] = None


def parse_cluster(spec: str) -> dict[str, tuple[int, int]]:
    """``prod=64x8,dev=2x1`` -> {pool: (nodes, gpus per node)}."""
    out: dict[str, tuple[int, int]] = {}
    for part in spec.split(","):
        part = part.strip()
        try:
            pool, size = part.split("=")
            n, g = size.lower().split("x")
            out[pool.strip()] = (int(n), int(g))
        except ValueError:
            raise TraceError(f"--cluster {spec!r}: write POOL=NODESxGPUS[,POOL=NODESxGPUS], e.g. prod=64x8,dev=2x1") from None
        if out[pool.strip()][0] < 1 or out[pool.strip()][1] < 1 or not pool.strip():
            raise TraceError(f"--cluster {part!r}: need at least one node with at least one GPU")
    return out


def build_config(cluster: dict[str, tuple[int, int]], base: Optional[QueueConfig]) -> QueueConfig:
    """Pools sized by ``--cluster``; their rules from ``base``'s pool of the same name, else the
    product defaults (``dev``: preemptible, 1 h max; others: not preemptible, no max)."""
    pools: dict[str, PoolConfig] = {}
    for name, (n, g) in cluster.items():
        nodes = {f"{name}-{i:04d}": g for i in range(n)}
        if base is not None and name in base.pools:
            pools[name] = base.pools[name].model_copy(update={"nodes": nodes})
        elif name == "dev":
            pools[name] = PoolConfig(nodes=nodes, preemptible=True, max_runtime=3600.0, max_queued=10**9)
        else:
            pools[name] = PoolConfig(nodes=nodes, max_queued=10**9)
    if base is None:
        return QueueConfig(pools=pools, defaults=UserLimits(max_queued=10**9))
    return base.model_copy(update={"pools": pools})


def read_trace(path: str, config: QueueConfig, time_scale: float = 1.0) -> list[SimJob]:
    """Parse the CSV; raises TraceError naming the line of the first bad row."""
    try:
        f = open(path, newline="")
    except OSError as e:
        raise TraceError(f"cannot read trace {path}: {e.strerror}") from None
    jobs: list[SimJob] = []
    seen: set[str] = set()
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise TraceError(f"{path}: empty file; the header needs {','.join(REQUIRED)}") from None
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise TraceError(f"{path} line 1: header lacks {', '.join(missing)} (need {','.join(REQUIRED)}; optional {','.join(OPTIONAL)})")
        col = {c: i for i, c in enumerate(header)}
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            try:
                jobs.append(_row(row, col, config, time_scale, seen))
            except TraceError as e:
                raise TraceError(f"{path} line {line}: {e}") from None
    jobs.sort(key=lambda j: j.submit)
    return jobs


def _row(row: list[str], col: dict[str, int], config: QueueConfig, scale: float, seen: set[str]) -> SimJob:
    """One trace row as a SimJob; raises TraceError saying what is wrong with it."""
    if len(row) != len(col):
        raise TraceError(f"{len(row)} fields, the header has {len(col)}")
    cell = {c: row[i].strip() for c, i in col.items()}  # by column name; get(c, ""): a column not there
    get = cell.get
    jid, user = get("job_id", ""), get("user", "")
    if not jid or not user:
        raise TraceError("job_id and user must not be empty")
    if jid in seen:
        raise TraceError(f"job_id {jid!r} appears twice")
    seen.add(jid)
    submit, duration = _number(cell, "submit_time"), _number(cell, "duration")
    gpus = _number(cell, "gpus", int)
    if submit < 0:
        raise TraceError(f"submit_time {submit} is negative")
    if duration <= 0:
        raise TraceError(f"duration {duration} must be positive (seconds)")
    if gpus < 0:
        raise TraceError(f"gpus {gpus} is negative")
    pr = get("priority", "").lower() or "medium"
    if pr not in _PRIORITY:
        raise TraceError(f"priority {pr!r} is not high, medium or low")
    pool = get("pool", "") or config.default_pool
    if pool not in config.pools:
        raise TraceError(f"pool {pool!r} is not in the cluster ({', '.join(config.pools)})")
    pre = get("preemptible", "").lower()
    if pre not in _BOOL:
        raise TraceError(f"preemptible {pre!r} is not true or false")
    tl = _number(cell, "time_limit") if get("time_limit") else None
    if tl is not None and tl <= 0:
        raise TraceError(f"time_limit {tl} must be positive (seconds)")
    return SimJob(jid, user, submit / scale, duration, gpus, _PRIORITY[pr], pool,
                  bool(_BOOL[pre]), tl, remaining=duration)


_PRIORITY = {p: Priority(p) for p in ("high", "medium", "low")}
"""The trace's priority names (lower case), as Priority."""


def _number(cell: dict[str, str], c: str, kind: type = float) -> Any:
    """Column ``c`` of a row as a number of this kind; a TraceError if it is not a finite one."""
    v = cell.get(c, "")
    try:
        x = kind(v)
    except ValueError:
        raise TraceError(f"{c} {v!r} is not a {'whole ' if kind is int else ''}number") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise TraceError(f"{c} {v!r} is not finite")
    return x


@dataclass(slots=True)
class _UserAcct:
    """Fairness tallies of a user (or of a group: the sum over its members)."""

    pending: int = 0  # queued jobs
    used: int = 0  # GPUs held
    received: float = 0.0  # GPU-seconds held while backlogged
    entitled: float = 0.0  # GPU-seconds of max-min fair share while backlogged
    backlog_s: float = 0.0
    weight: float = 1.0


class _FitTracker:
    """Per pool: free GPUs per node and the pending job shapes, to tell whether some queued
    job would fit on the GPUs free right now (one node with enough free GPUs, or enough idle
    nodes for a multi-node job)."""

    def __init__(self, config: QueueConfig):
        self.pool_of: dict[str, str] = {}
        self.free: dict[str, int] = {}
        self.by_free: dict[str, list[int]] = {}  # pool -> [number of nodes with f free GPUs]
        self.pending: dict[str, dict[tuple[int, int], int]] = {}
        self.changed = True  # free GPUs or pending shapes changed since ``fits`` was last asked
        for pool, pc in config.pools.items():
            self.by_free[pool] = [0] * (max(pc.nodes.values()) + 1)
            self.pending[pool] = {}
            for node, g in pc.nodes.items():
                self.pool_of[node], self.free[node] = pool, g
                self.by_free[pool][g] += 1

    def take(self, placement: dict[str, tuple[int, ...]], sign: int) -> None:
        """Allocate (sign -1) or release (+1) the GPUs of a placement."""
        self.changed = True
        for node, ids in placement.items():
            bf = self.by_free[self.pool_of[node]]
            bf[self.free[node]] -= 1
            self.free[node] += sign * len(ids)
            bf[self.free[node]] += 1

    def queue(self, pool: str, shape: tuple[int, int], delta: int) -> None:
        """A job of this (GPUs, nodes) shape joined (+1) or left (-1) the pool's queue."""
        self.changed = True
        d = self.pending[pool]
        d[shape] = d.get(shape, 0) + delta
        if not d[shape]:
            del d[shape]

    def fits(self, pool: str) -> bool:
        """Would some queued job of the pool fit on its free GPUs now?"""
        bf = self.by_free[pool]
        best = len(bf) - 1
        while best > 0 and not bf[best]:
            best -= 1
        for g, nodes in self.pending[pool]:
            if nodes <= 1 and g <= best:
                return True
            if nodes > 1 and bf[-1] >= nodes:
                return True
        return False


def hierarchical_fill(capacity: float, demand: dict[str, float], weight: dict[str, float],
                      group_of: dict[str, str], group_weight: dict[str, float],
                      memo: Optional[dict[str, tuple[float, dict[str, float], dict[str, float]]]] = None,
                      ) -> dict[str, float]:
    """Weighted max-min fair shares in two levels: ``capacity`` among the groups (by group
    weight, each group's demand the sum of its members'), then each group's share among its
    members (by user weight). ``group_of`` maps every user to its group. ``memo`` (kept by the
    caller across calls, weights unchanged) holds each group's last split: a group whose share
    and members' demands are as then gets the same split without filling again."""
    gdemand: dict[str, float] = {}
    by_group: dict[str, dict[str, float]] = {}  # each group's members' demands, in demand's order
    for u, d in demand.items():
        g = group_of[u]
        members = by_group.get(g)
        if members is None:
            by_group[g] = {u: d}
            gdemand[g] = 0.0 + d
        else:
            members[u] = d
            gdemand[g] += d
    gshare = water_fill(capacity, gdemand, group_weight)
    out: dict[str, float] = {}
    for g, share in gshare.items():
        members = by_group[g]
        if memo is None:
            out.update(water_fill(share, members, weight))
            continue
        last = memo.get(g)
        # the split depends on the members' order too (their weights are summed in it)
        if last is None or last[0] != share or last[1] != members or list(last[1]) != list(members):
            last = memo[g] = (share, members, water_fill(share, members, weight))
        out.update(last[2])
    return out


def water_fill(capacity: float, demand: Mapping[str, float], weight: Mapping[str, float]) -> dict[str, float]:
    """Weighted max-min fair shares of ``capacity``: every user gets ``w_u * L`` GPUs, or its
    whole demand if that is less, with the level ``L`` set so the shares add up to the capacity
    (or every demand is met)."""
    out: dict[str, float] = {}
    ws = list(map(weight.__getitem__, demand))  # (the loops that build the lists run in C)
    left, wsum = float(capacity), sum(ws)
    # by demand per weight, then name (names are unique: the demand never decides a tie, nor
    # does the weight carried along)
    for _, u, d, w in sorted(zip(map(truediv, demand.values(), ws), demand, demand.values(), ws)):
        level = left / wsum if wsum > 0 else 0.0
        share = w * level
        if not share < d:  # min(d, share), without the call: the same value and type
            share = d
        out[u] = share
        left -= share
        wsum -= w
    return out


class _GroupFill:
    """``hierarchical_fill`` of one pool, kept up to date demand change by demand change
    instead of rebuilt from the whole demand at every call (the simulator asks after nearly
    every submission and finish): each group's members' demands, in the order of the pool's
    demand dict, their total, and each group's last split, reused while the group's share and
    members are as then.

    ``shares()`` equals ``hierarchical_fill`` exactly (to the last bit, as floats) where the
    group weights are whole numbers: the groups are then filled in an order other than that
    of the demand dict, and only the sum of their weights depends on that order, which is
    exact for whole numbers. The caller checks that (``whole_weight``) and falls back to
    ``hierarchical_fill`` otherwise."""

    def __init__(self, capacity: float, weight: dict[str, float], group_of: dict[str, str],
                 group_weight: dict[str, float]):
        self.capacity = capacity
        self.weight, self.group_of, self.group_weight = weight, group_of, group_weight
        self.members: dict[str, dict[str, float]] = {}  # group -> {user: demand}, in demand's order
        self.total: dict[str, float] = {}  # group -> its members' demands summed
        self.version: dict[str, int] = {}  # group -> count of changes to its members' demands
        self.splits: dict[str, tuple[float, int, dict[str, float]]] = {}  # group -> (share, version, split)

    def set(self, user: str, demand: float) -> None:
        """The user's demand is now ``demand`` (0: gone). Call it whenever the pool's demand
        dict changes, as it changes (updated in place, added last, deleted at 0), so that
        each group's members keep that dict's order: a member's weight is summed in it."""
        g = self.group_of[user]
        members = self.members.get(g)
        if members is None:
            members = self.members[g] = {}
        old = members.get(user, 0)
        if demand:
            members[user] = demand
            self.total[g] = self.total.get(g, 0) + demand - old
        else:
            del members[user]
            self.total[g] -= old
            if not members:
                del self.members[g], self.total[g]
        self.version[g] = self.version.get(g, 0) + 1

    def shares(self) -> dict[str, float]:
        """Every user's share, as floats (``0.0 + x``, as the caller sums them): a new dict."""
        # float(total) is 0.0 + d1 + d2 + ... of hierarchical_fill: sums of whole numbers, exact
        gdemand = {g: float(t) for g, t in self.total.items()}
        out: dict[str, float] = {}
        for g, share in water_fill(self.capacity, gdemand, self.group_weight).items():
            version = self.version[g]
            last = self.splits.get(g)
            if last is None or last[0] != share or last[1] != version:
                split = water_fill(share, self.members[g], self.weight)
                last = self.splits[g] = (share, version, {u: 0.0 + x for u, x in split.items()})
            out.update(last[2])
        return out


def whole_weight(w: float) -> bool:
    """Is ``w`` a whole number small enough that sums of such weights are exact in any order?"""
    return float(w).is_integer() and abs(w) <= 2**32


@dataclass
class Simulation:
    """Runs one trace through one scheduler."""

    config: QueueConfig
    policy: str
    jobs: list[SimJob]
    resume_on_preempt: bool = True
    stop_delay: float = 30.0
    series: list[tuple[float, int, int]] = field(default_factory=list)
    _biggest: dict[str, int] = field(default_factory=dict, repr=False)  # pool -> GPUs of its biggest node

    def run(self) -> dict[str, Any]:
        t_wall = time.perf_counter()
        sched = make_scheduler(self.config, self.policy, baseline=True)
        total = sum(sum(pc.nodes.values()) for pc in self.config.pools.values())
        byid = {j.id: j for j in self.jobs}
        ev: list[tuple[float, int, int, str, int]] = []  # (time, kind, seq, job id, attempt)
        seq = 0
        for j in self.jobs:
            seq += 1
            ev.append((j.submit, 1, seq, j.id, 0))
        heapq.heapify(ev)
        used = 0
        queued = 0
        busy_s = 0.0
        busy_q_s = 0.0
        queued_s = 0.0
        fitter = _FitTracker(self.config)
        pool_used = {p: 0 for p in self.config.pools}
        busy_fit = cap_fit = 0.0  # GPU-seconds busy / available while a queued job fit
        fit_s = 0.0  # seconds during which some queued job fit on the free GPUs
        fitting: list[str] = []  # the pools where one does now, in the config's order
        shapes: dict[str, tuple[int, int]] = {}  # job -> (GPUs, nodes), from its request
        last_t = self.jobs[0].submit if self.jobs else 0.0
        t_first = last_t
        preemptions = 0
        wasted = 0.0
        accts: dict[str, _UserAcct] = {}
        # fairness: per pool, each user's demand (GPUs held + queued); the max-min fair shares
        # of the backlogged users are recomputed when a demand changed (see docs/scheduling.md)
        capacity = {p: sum(pc.nodes.values()) for p, pc in self.config.pools.items()}
        demand: dict[str, dict[str, float]] = {p: {} for p in capacity}
        weights: dict[str, float] = {}
        backlogged: dict[str, _UserAcct] = {}  # users with queued jobs
        fair: dict[str, float] = {}
        fair_dirty = False
        fill_memo: dict[str, dict] = {p: {} for p in capacity}  # per pool: each group's last split
        zeros = itertools.repeat(0.0)  # the default of share_of, for map

        # groups: a user in none is a group of its own, weighted as the user
        hierarchical = bool(self.config.groups)
        group_of: dict[str, str] = {}
        group_weight: dict[str, float] = {}
        group_accts: dict[str, _UserAcct] = {}
        backlogged_groups: dict[str, int] = {}  # group -> backlogged members
        members: dict[str, list[str]] = {}
        group_fair: dict[str, float] = {}  # group -> its members' fair shares summed (until they change)
        # per pool, hierarchical_fill kept up to date (see _GroupFill); used while every group
        # weight is a whole number, else hierarchical_fill is called as the reference
        group_fill = {p: _GroupFill(capacity[p], weights, group_of, group_weight) for p in capacity}
        whole_group_weights = True

        def acct(u: str) -> _UserAcct:
            nonlocal whole_group_weights
            a = accts.get(u)
            if a is None:
                a = accts[u] = _UserAcct(weight=self.config.limits_for(u).weight)
                weights[u] = a.weight
                g = self.config.group_of(u)
                group_of[u] = g if g is not None else f"user:{u}"
                group_weight[group_of[u]] = self.config.groups[g].weight if g is not None else a.weight
                group_accts.setdefault(group_of[u], _UserAcct(weight=group_weight[group_of[u]]))
                members.setdefault(group_of[u], []).append(u)
                group_fair.pop(group_of[u], None)
                whole_group_weights = whole_group_weights and whole_weight(group_weight[group_of[u]])
            return a

        def change(j: SimJob, dpend: int = 0, dused: int = 0, ddemand: int = 0) -> None:
            """A job joined (dpend 1) or left (-1) the queue, took or gave back GPUs (dused),
            changed its user's demand (ddemand): update every tally that depends on it."""
            nonlocal queued, used, fair_dirty
            a = accts.get(j.user) or acct(j.user)
            was = a.pending > 0
            a.pending += dpend
            a.used += dused
            group_accts[group_of[j.user]].used += dused
            queued += dpend
            used += dused
            pool_used[j.pool] += dused
            if dpend:
                fitter.queue(j.pool, shapes[j.id], dpend)
            if a.pending > 0:
                backlogged[j.user] = a
            else:
                backlogged.pop(j.user, None)
            if was != (a.pending > 0):
                g = group_of[j.user]
                backlogged_groups[g] = backlogged_groups.get(g, 0) + (1 if a.pending > 0 else -1)
                if not backlogged_groups[g]:
                    del backlogged_groups[g]
            if ddemand:
                d = demand[j.pool]
                d[j.user] = new = d.get(j.user, 0) + ddemand
                if not new:
                    del d[j.user]
                if hierarchical:
                    group_fill[j.pool].set(j.user, new)
                fair_dirty = True  # (a start moves GPUs from queued to held: same demand)

        def fair_shares() -> dict[str, float]:
            nonlocal fair, fair_dirty
            if fair_dirty:
                fair = {}
                for p, d in demand.items():
                    if d and not backlogged.keys().isdisjoint(d):
                        if hierarchical and whole_group_weights:
                            shares = group_fill[p].shares()  # a new dict of floats: can be fair itself
                            if not fair:
                                fair = shares
                                continue
                        else:
                            shares = (hierarchical_fill(capacity[p], d, weights, group_of, group_weight, fill_memo[p])
                                      if hierarchical else water_fill(capacity[p], d, weights))
                            if not fair:  # the first pool's shares (0.0 + x: floats, as the sum below makes them)
                                fair = {u: 0.0 + x for u, x in shares.items()}
                                continue
                        for u, x in shares.items():
                            fair[u] = fair.get(u, 0.0) + x
                fair_dirty = False
                group_fair.clear()
            return fair

        def end_attempt(j: SimJob, now: float) -> None:
            ran = now - j.start if j.start is not None else 0.0
            j.run_s += ran
            if j.placement is not None:
                fitter.take(j.placement, +1)
                j.placement = None
            change(j, dused=-j.gpus, ddemand=-j.gpus)
            j.start = None

        def apply(decisions: list, now: float) -> None:
            nonlocal seq
            for d in decisions:
                j = byid[d.job_id]
                if isinstance(d, Start):
                    j.start = now
                    j.attempt += 1
                    j.stopping = False
                    j.placement = d.placement
                    fitter.take(d.placement, -1)
                    change(j, dpend=-1, dused=j.gpus)
                    sched.started(j.id, now)
                    seq += 1
                    heapq.heappush(ev, (now + j.remaining, 0, seq, j.id, j.attempt))
                elif isinstance(d, Preempt):
                    if j.start is None or j.stopping:
                        continue
                    j.stopping = True
                    seq += 1
                    stop = now + min(self.stop_delay, d.grace_s)
                    heapq.heappush(ev, (stop, 2, seq, j.id, j.attempt))
                elif isinstance(d, TimeOut):
                    if j.start is None:
                        continue
                    j.remaining -= now - j.start
                    end_attempt(j, now)
                    j.end, j.outcome = now, "timed_out"
                    apply(sched.finished(j.id, Outcome.TIMED_OUT, now), now)

        series = self.series
        heappop, heappush = heapq.heappop, heapq.heappush
        tick, next_wakeup = sched.tick, sched.next_wakeup
        while ev:
            now = ev[0][0]
            dt = now - last_t
            if dt > 0:
                busy_s += used * dt
                if queued > 0:
                    busy_q_s += used * dt
                    queued_s += dt
                    if fitting:
                        fit_s += dt
                        for p in fitting:
                            busy_fit += pool_used[p] * dt
                            cap_fit += capacity[p] * dt
                if backlogged:
                    shares = fair_shares() if fair_dirty else fair
                    share_of = shares.get  # share_of(u, 0.0): a user without a share has 0
                    for u, a in backlogged.items():
                        a.backlog_s += dt
                        a.received += a.used * dt
                        a.entitled += share_of(u, 0.0) * dt
                    if hierarchical:
                        for g in backlogged_groups:
                            ga = group_accts[g]
                            ga.backlog_s += dt
                            ga.received += ga.used * dt
                            gfair = group_fair.get(g)
                            if gfair is None:  # the members' shares, summed in members' order
                                gfair = group_fair[g] = sum(map(share_of, members[g], zeros))
                            ga.entitled += gfair * dt
                last_t = now
            while ev and ev[0][0] <= now:
                _, kind, _, jid, attempt = heappop(ev)
                if kind == 3:
                    continue
                j = byid[jid]
                if kind == 1:
                    req = self._request(j)
                    r = sched.submit(req, now)
                    if isinstance(r, Reject):
                        j.rejected = r.reason
                    else:
                        shapes[j.id] = (j.gpus, req.nodes)
                        change(j, dpend=1, ddemand=j.gpus)
                elif j.attempt == attempt and j.start is not None and j.end is None:
                    if kind == 0:
                        end_attempt(j, now)
                        j.remaining = 0.0
                        j.end, j.outcome = now, "succeeded"
                        apply(sched.finished(jid, Outcome.SUCCEEDED, now), now)
                    elif kind == 2:
                        ran = now - j.start
                        if self.resume_on_preempt:
                            j.remaining -= ran
                        else:
                            wasted += j.gpus * ran
                        end_attempt(j, now)
                        preemptions += 1
                        j.preemptions += 1
                        sched.finished(jid, Outcome.PREEMPTED, now)
                        change(j, dpend=1, ddemand=j.gpus)
            decisions = tick(now)
            if decisions:
                apply(decisions, now)
            w = next_wakeup()
            for _ in range(10):  # decisions (e.g. a timeout) may have made more work now
                if w is None or w > now:
                    break
                apply(tick(now), now)
                w = next_wakeup()
            if fitter.changed:
                fitting = [p for p in capacity if fitter.pending[p] and fitter.fits(p)]
                fitter.changed = False
            if len(series) < 200_000:
                series.append((now, queued, used))
            if w is not None and w > now and (not ev or w < ev[0][0]):
                seq += 1
                heappush(ev, (w, 3, seq, "", 0))  # a bare tick
        fit = (busy_fit / cap_fit if cap_fit > 0 else 1.0, fit_s / queued_s if queued_s > 0 else 0.0)
        return self._metrics(total, t_first, last_t, busy_s, busy_q_s, queued_s, fit, preemptions,
                             wasted, accts, group_accts if hierarchical else {}, time.perf_counter() - t_wall)

    def _request(self, j: SimJob) -> JobRequest:
        """The job as the scheduler sees it (no duration). A job larger than the pool's biggest
        node spans whole nodes: ``nodes = gpus / node size`` when that divides evenly."""
        biggest = self._biggest.get(j.pool)
        if biggest is None:
            biggest = self._biggest[j.pool] = max(self.config.pools[j.pool].nodes.values())
        nodes = 1
        if j.gpus > biggest and j.gpus % biggest == 0:
            nodes = j.gpus // biggest
        return JobRequest(
            id=j.id, user=j.user, pool=j.pool, gpus=j.gpus, priority=j.priority, nodes=nodes,
            submit_time=j.submit, time_limit=j.time_limit, preemptible=j.preemptible,
            group=self.config.group_of(j.user),
        )

    def _metrics(self, total: int, t0: float, t1: float, busy_s: float, busy_q_s: float,
                 queued_s: float, fit: tuple[float, float], preemptions: int, wasted: float, accts: dict[str, _UserAcct],
                 group_accts: dict[str, _UserAcct], wall: float) -> dict[str, Any]:
        done = [j for j in self.jobs if j.end is not None]
        jct = sorted(j.end - j.submit for j in done)  # type: ignore[operator]
        wait = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done)  # type: ignore[operator]
        span = max(t1 - t0, 1e-9)
        by: dict[str, dict[str, float]] = {}
        for p in ("high", "medium", "low"):
            w = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done if j.priority.value == p)  # type: ignore[operator]
            by[p] = {"jobs": len(w), "avg": _avg(w), "p99": _pct(w, 99), "max": w[-1] if w else 0.0}
        by_size: dict[str, dict[str, float]] = {}
        for label, lo, hi in SIZES:
            w = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done if lo <= j.gpus <= hi)  # type: ignore[operator]
            by_size[label] = {"jobs": len(w), "avg": _avg(w), "p99": _pct(w, 99), "max": w[-1] if w else 0.0}
        jain, n_jain = _jain(accts.values(), 0.01 * span)
        groups = {"jain_fairness_groups": _jain(group_accts.values(), 0.01 * span)[0],
                  "jain_groups": _jain(group_accts.values(), 0.01 * span)[1]} if group_accts else {}
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "completed": len(done),
            "rejected": sum(1 for j in self.jobs if j.rejected),
            "timed_out": sum(1 for j in done if j.outcome == "timed_out"),
            "gpus": total,
            "avg_jct_s": _avg(jct),
            "p50_jct_s": _pct(jct, 50),
            "p99_jct_s": _pct(jct, 99),
            "avg_wait_s": _avg(wait),
            "p99_wait_s": _pct(wait, 99),
            "max_wait_s": wait[-1] if wait else 0.0,
            "wait_by_priority": by,
            "wait_by_gpus": by_size,
            "utilization": busy_s / (total * span),
            "utilization_while_queued": (busy_q_s / (total * queued_s)) if queued_s > 0 else 1.0,
            "utilization_while_fits": fit[0],
            "fits_share_of_queued_time": fit[1],
            "jain_fairness": jain,
            "jain_users": n_jain,
            **groups,
            "preemptions": preemptions,
            "wasted_gpu_hours": wasted / 3600.0,
            "makespan_s": span,
            "sim_wall_s": wall,
        }


SIZES = (("1", 0, 1), ("2", 2, 2), ("4", 3, 4), ("8", 5, 8), ("16+", 9, 10**9))
"""Job sizes the waits are reported by: (label, fewest GPUs, most GPUs)."""


def _jain(accts: Iterable[_UserAcct], min_backlog_s: float) -> tuple[float, int]:
    """Jain's index over ``received / entitled`` of the accounts backlogged at least
    ``min_backlog_s`` seconds, and how many there are."""
    xs = [a.received / a.entitled for a in accts if a.entitled > 0 and a.backlog_s >= min_backlog_s]
    jain = (sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))) if xs and any(xs) else 1.0
    return jain, len(xs)


def _avg(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return 0.0
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


def plot(sim: Simulation, path: str) -> None:
    """Queue length and utilization over time, and the wait CDF by priority."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sim.series
    step = max(1, len(s) // 5000)
    s = s[::step]
    total = sum(sum(pc.nodes.values()) for pc in sim.config.pools.values())
    t = [(x[0] - s[0][0]) / 3600 for x in s] if s else []
    fig, ax = plt.subplots(3, 1, figsize=(9, 10))
    ax[0].plot(t, [x[1] for x in s], lw=0.8)
    ax[0].set_ylabel("queued jobs")
    ax[1].plot(t, [x[2] / total for x in s], lw=0.8)
    ax[1].set_ylabel("GPU utilization")
    ax[1].set_xlabel("hours")
    for p in ("high", "medium", "low"):
        w = sorted(max(0.0, j.end - j.submit - j.run_s) / 3600 for j in sim.jobs if j.end is not None and j.priority.value == p)
        if w:
            ax[2].plot(w, [(i + 1) / len(w) for i in range(len(w))], label=p)
    ax[2].set_xscale("symlog", linthresh=0.01)
    ax[2].set_xlabel("wait (hours)")
    ax[2].set_ylabel("CDF")
    ax[2].legend()
    fig.suptitle(f"policy {sim.policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cli_main(argv: list[str]) -> int:
    """``gpuqueue simulate``: returns the exit code (2 for bad input, with one line on stderr)."""
    ap = argparse.ArgumentParser(prog="gpuqueue simulate", description=__doc__.splitlines()[0])
    ap.add_argument("trace", help="CSV: job_id,user,submit_time,duration,gpus[,priority,pool,preemptible,time_limit]")
    ap.add_argument("--cluster", required=True, help="pools, e.g. prod=64x8,dev=2x1")
    ap.add_argument("--config", help="TOML config: pool rules, users, policy knobs")
    ap.add_argument("--policy", default="gpuqueue", choices=["gpuqueue", "fifo"])
    ap.add_argument("--json", help="write the metrics here")
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--time-scale", type=float, default=1.0,
                    help="divide submit times by this (compress arrivals to add load)")
    ap.add_argument("--preempt", choices=["resume", "restart"], default="resume",
                    help="preempted jobs resume from their grace-period checkpoint, or restart")
    args = ap.parse_args(argv)
    try:
        if args.time_scale <= 0:
            raise TraceError("--time-scale must be positive")
        base = load_config(args.config) if args.config else None
        config = build_config(parse_cluster(args.cluster), base)
        jobs = read_trace(args.trace, config, args.time_scale)
    except (TraceError, GPUQueueError) as e:
        print(f"gpuqueue simulate: error: {e}", file=sys.stderr)
        return 2
    sim = Simulation(config, args.policy, jobs, resume_on_preempt=args.preempt == "resume")
    result = sim.run()
    text = json.dumps(result, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    if args.plot:
        plot(sim, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
