"""A tiny shell for tests: drives a scheduler like the service does and checks invariants."""

from __future__ import annotations

from typing import Any

from gpuqueue.queue.config import PolicyConfig, PoolConfig, QueueConfig, UserLimits
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.base import JobRequest, Preempt, Start, TimeOut
from gpuqueue.queue.states import Outcome, Priority


def config(pools: dict[str, dict[str, int]], *, preemptible: tuple[str, ...] = (), users: dict[str, UserLimits] | None = None, **policy: Any) -> QueueConfig:
    return QueueConfig(
        pools={p: PoolConfig(nodes=n, preemptible=p in preemptible, starvation_timeout=600) for p, n in pools.items()},
        users=users or {},
        policy=PolicyConfig(**policy),
    )


def job(id: str, user: str = "u", gpus: int = 1, pool: str = "p", pr: str = "medium", t: float = 0.0, **kw: Any) -> JobRequest:
    return JobRequest(id=id, user=user, pool=pool, gpus=gpus, priority=Priority(pr), submit_time=t, **kw)


class Shell:
    """Holds running jobs, applies decisions, checks the invariants after every step."""

    def __init__(self, sched: FairShareScheduler):
        self.s = sched
        self.running: dict[str, dict[str, tuple[int, ...]]] = {}
        self.log: list[tuple[float, str, str]] = []
        self.preempted_by: list[tuple[str, str]] = []

    def apply(self, decisions: list, now: float) -> None:
        for d in decisions:
            if isinstance(d, Start):
                assert d.job_id not in self.running
                self.running[d.job_id] = d.placement
                self.log.append((now, "start", d.job_id))
                self.s.started(d.job_id, now)
            elif isinstance(d, Preempt):
                self.log.append((now, "preempt", d.job_id))
                self.preempted_by.append((d.job_id, d.reason.split()[3]))
            elif isinstance(d, TimeOut):
                self.finish(d.job_id, Outcome.TIMED_OUT, now)
        self.check()

    def finish(self, jid: str, outcome: Outcome, now: float) -> list:
        self.running.pop(jid, None)
        self.log.append((now, outcome.value, jid))
        out = self.s.finished(jid, outcome, now)
        self.check()
        return out

    def step(self, ends: dict[str, float], now: float, runtime: float) -> list[Start]:
        """One step of a replay: finish the jobs whose end in ``ends`` has come, tick, apply;
        jobs started now end ``runtime`` later. Returns the starts."""
        for jid in [j for j, t in ends.items() if t <= now]:
            del ends[jid]
            self.finish(jid, Outcome.SUCCEEDED, now)
        out = self.s.tick(now)
        self.apply(out, now)
        starts = [d for d in out if isinstance(d, Start)]
        for d in starts:
            ends[d.job_id] = now + runtime
        return starts

    def check(self) -> None:
        """GPUs never over-allocated; a job's GPUs all on its nodes; quotas hold."""
        used: dict[str, set[int]] = {}
        for jid, placement in self.running.items():
            for node, ids in placement.items():
                n = self.s.cluster.nodes[node]
                assert all(0 <= i < n.gpus for i in ids), (jid, node, ids)
                taken = used.setdefault(node, set())
                assert not (taken & set(ids)), f"GPUs {taken & set(ids)} on {node} given twice"
                taken |= set(ids)
        for node, ids in used.items():
            n = self.s.cluster.nodes[node]
            if n.up:
                assert not (ids & n.free), f"{node}: GPUs both free and used"
        per_user: dict[str, list[int]] = {}
        for jid, placement in self.running.items():
            j = self.s.jobs[jid].request
            assert sum(len(v) for v in placement.values()) == j.gpus
            if j.nodes > 1:
                assert len(placement) == j.nodes
            per_user.setdefault(j.user, []).append(j.gpus)
        for user, gs in per_user.items():
            lim = self.s.config.limits_for(user)
            if lim.max_gpus is not None:
                assert sum(gs) <= lim.max_gpus, (user, gs)
            if lim.max_running is not None:
                assert len(gs) <= lim.max_running, (user, gs)
