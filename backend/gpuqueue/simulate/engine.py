"""The simulation loop: replays a trace's jobs through one scheduler, event by event, and
tallies what happened to them."""

from __future__ import annotations

import heapq
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from ..queue.config import QueueConfig
from ..queue.states import Outcome
from ..scheduler import make_scheduler
from ..scheduler.base import JobRequest, Preempt, Reject, Start, TimeOut
from .report import SIZES, avg, fairness_by, jain, pct
from .tallies import FitTracker, GroupFill, UserAcct, hierarchical_fill, water_fill, whole_weight
from .trace import SimJob


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
        fitter = FitTracker(self.config)
        pool_used = {p: 0 for p in self.config.pools}
        busy_fit = cap_fit = 0.0  # GPU-seconds busy / available while a queued job fit
        fit_s = 0.0  # seconds during which some queued job fit on the free GPUs
        fitting: list[str] = []  # the pools where one does now, in the config's order
        shapes: dict[str, tuple[int, int]] = {}  # job -> (GPUs, nodes), from its request
        last_t = self.jobs[0].submit if self.jobs else 0.0
        t_first = last_t
        preemptions = 0
        wasted = 0.0
        accts: dict[str, UserAcct] = {}
        # fairness: per pool, each user's demand (GPUs held + queued); the max-min fair shares
        # of the backlogged users are recomputed when a demand changed (see docs/scheduling.md)
        capacity = {p: sum(pc.nodes.values()) for p, pc in self.config.pools.items()}
        demand: dict[str, dict[str, float]] = {p: {} for p in capacity}
        weights: dict[str, float] = {}
        backlogged: dict[str, UserAcct] = {}  # users with queued jobs
        fair: dict[str, float] = {}
        fair_dirty = False
        fill_memo: dict[str, dict] = {p: {} for p in capacity}  # per pool: each group's last split
        zeros = itertools.repeat(0.0)  # the default of share_of, for map

        # groups: a user in none is a group of its own, weighted as the user
        hierarchical = bool(self.config.groups)
        group_of: dict[str, str] = {}
        group_weight: dict[str, float] = {}
        group_accts: dict[str, UserAcct] = {}
        backlogged_groups: dict[str, int] = {}  # group -> backlogged members
        members: dict[str, list[str]] = {}
        group_fair: dict[str, float] = {}  # group -> its members' fair shares summed (until they change)
        # per pool, hierarchical_fill kept up to date (see GroupFill); used while every group
        # weight is a whole number, else hierarchical_fill is called as the reference
        group_fill = {p: GroupFill(capacity[p], weights, group_of, group_weight) for p in capacity}
        whole_group_weights = True

        def acct(u: str) -> UserAcct:
            nonlocal whole_group_weights
            a = accts.get(u)
            if a is None:
                a = accts[u] = UserAcct(weight=self.config.limits_for(u).weight)
                weights[u] = a.weight
                g = self.config.group_of(u)
                group_of[u] = g if g is not None else f"user:{u}"
                group_weight[group_of[u]] = self.config.groups[g].weight if g is not None else a.weight
                group_accts.setdefault(group_of[u], UserAcct(weight=group_weight[group_of[u]]))
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
                             wasted, accts, group_accts if hierarchical else {}, group_of, time.perf_counter() - t_wall)

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
                 queued_s: float, fit: tuple[float, float], preemptions: int, wasted: float, accts: dict[str, UserAcct],
                 group_accts: dict[str, UserAcct], group_of: dict[str, str], wall: float) -> dict[str, Any]:
        done = [j for j in self.jobs if j.end is not None]
        jct = sorted(j.end - j.submit for j in done)  # type: ignore[operator]
        wait = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done)  # type: ignore[operator]
        span = max(t1 - t0, 1e-9)
        by: dict[str, dict[str, float]] = {}
        for p in ("high", "medium", "low"):
            w = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done if j.priority.value == p)  # type: ignore[operator]
            by[p] = {"jobs": len(w), "avg": avg(w), "p99": pct(w, 99), "max": w[-1] if w else 0.0}
        by_size: dict[str, dict[str, float]] = {}
        for label, lo, hi in SIZES:
            w = sorted(max(0.0, j.end - j.submit - j.run_s) for j in done if lo <= j.gpus <= hi)  # type: ignore[operator]
            by_size[label] = {"jobs": len(w), "avg": avg(w), "p99": pct(w, 99), "max": w[-1] if w else 0.0}
        users_jain, n_jain = jain(accts.values(), 0.01 * span)
        groups_jain, n_groups = jain(group_accts.values(), 0.01 * span)
        ran: dict[str, float] = {}  # GPU-seconds each user's (and group's) jobs ran, all attempts
        group_ran: dict[str, float] = {}
        for j in self.jobs:
            ran[j.user] = ran.get(j.user, 0.0) + j.gpus * j.run_s
        if group_accts:
            for u, s in ran.items():
                if s:  # (it started a job, so the tallies know its group)
                    group_ran[group_of[u]] = group_ran.get(group_of[u], 0.0) + s
        groups = {"jain_fairness_groups": groups_jain, "jain_groups": n_groups,
                  "fairness_by_group": fairness_by(group_accts, 0.01 * span, group_ran)} if group_accts else {}
        return {
            "policy": self.policy,
            "jobs": len(self.jobs),
            "completed": len(done),
            "rejected": sum(1 for j in self.jobs if j.rejected),
            "timed_out": sum(1 for j in done if j.outcome == "timed_out"),
            "gpus": total,
            "avg_jct_s": avg(jct),
            "p50_jct_s": pct(jct, 50),
            "p99_jct_s": pct(jct, 99),
            "avg_wait_s": avg(wait),
            "p99_wait_s": pct(wait, 99),
            "max_wait_s": wait[-1] if wait else 0.0,
            "wait_by_priority": by,
            "wait_by_gpus": by_size,
            "utilization": busy_s / (total * span),
            "utilization_while_queued": (busy_q_s / (total * queued_s)) if queued_s > 0 else 1.0,
            "utilization_while_fits": fit[0],
            "fits_share_of_queued_time": fit[1],
            "jain_fairness": users_jain,
            "jain_users": n_jain,
            "fairness_by_user": fairness_by(accts, 0.01 * span, ran),
            **groups,
            "preemptions": preemptions,
            "wasted_gpu_hours": wasted / 3600.0,
            "makespan_s": span,
            "sim_wall_s": wall,
        }
