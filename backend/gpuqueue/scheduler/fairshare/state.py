"""What the policy shows of itself (the queue snapshot, the pending summary) and what it keeps
across restarts (``export_state`` / ``import_state``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..base import PoolPending
from .records import PENDING, RUNNING, STOPPING, WAITING

if TYPE_CHECKING:
    from .policy import FairShareScheduler


def snapshot(sched: FairShareScheduler) -> dict[str, Any]:
    """Pools with GPUs total/used and queue lengths, plus per-user GPUs held."""
    pools = {}
    for name, p in sched.pools.items():
        pools[name] = {
            "gpus_total": p.nodes.total,
            "gpus_used": p.nodes.total - p.nodes.free,
            "queued": p.queue.queued,
            "running": sum(
                1 for j in sched.jobs.values() if j.request.pool == name and j.state in (RUNNING, STOPPING)
            ),
            "reserved_for": list(p.reservations),
        }
    users = {
        n: {"gpus": u.gpus, "running": u.running, "usage_gpu_hours": round(sched.usage(n, sched._now), 6)}
        for n, u in sorted(sched.ledger.users.items())
    }
    return {"pools": pools, "users": users}


def pending_summary(sched: FairShareScheduler, now: float) -> dict[str, PoolPending]:
    """Per pool: the waiting jobs by priority, and how many are past their retry backoff."""
    out = {name: PoolPending() for name in sched.pools}
    for j in list(sched.jobs.values()):
        st = j.state
        if st == PENDING or st == WAITING:
            r = j.request
            out[r.pool].add(r.priority.value, r.submit_time, st == PENDING)
    return out


def export_state(sched: FairShareScheduler) -> dict[str, Any]:
    """JSON-ready state worth keeping across restarts: decayed usage (of users and of
    groups), users' groups, budgets, preemption counts."""
    now = sched._now
    return {
        "version": 1,
        "at": now,
        "usage_gpu_hours": {u.name: sched.usage(u.name, now) for u in sched.ledger.with_usage()},
        # the configured group of each user (it may have come from the hub, not the config)
        # and each group's usage (what its users used while in it: usage stays where charged)
        "user_groups": {u.name: u.group.name for u in sched.ledger.with_usage()
                        if u.group is not None and u.group.configured},
        "group_usage_gpu_hours": {g.name: g.scaled / sched.ledger.scale(now)
                                  for _, g in sorted(sched.ledger.groups.items()) if g.configured},
        "preemption_tokens": {n: [p.tokens, p.tokens_at] for n, p in sorted(sched.pools.items())},
        "job_preemptions": dict(sorted(sched.preempt_counts.items())),
    }


def import_state(sched: FairShareScheduler, state: dict[str, Any]) -> None:
    """Load what ``export_state`` wrote (call before restoring jobs)."""
    at = float(state.get("at", 0.0))
    sched._now = max(sched._now, at)
    sched.order_epoch += 1
    saved_groups = state.get("user_groups", {})
    for name, usage in state.get("usage_gpu_hours", {}).items():
        group = sched.config.group_of(name)  # the config's members first, as at a submit
        if group is None:
            group = saved_groups.get(name)
        sched.ledger.set_usage(name, float(usage), at, group)
    for name, usage in state.get("group_usage_gpu_hours", {}).items():
        sched.ledger.set_group_usage(name, float(usage), at)
    for name, (tokens, tokens_at) in state.get("preemption_tokens", {}).items():
        if name in sched.pools:
            sched.pools[name].tokens = float(tokens)
            sched.pools[name].tokens_at = float(tokens_at)
    sched.preempt_counts.update({k: int(v) for k, v in state.get("job_preemptions", {}).items()})
    for jid, n in sched.preempt_counts.items():
        if jid in sched.jobs:
            sched.jobs[jid].preemptions = n
    for p in sched.pools.values():
        p.queue.rebuild_user_heaps(sched.ledger.users)
        p.dirty = True
