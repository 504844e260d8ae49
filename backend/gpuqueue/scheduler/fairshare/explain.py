"""Explanations: why a queued job waits, its place in its pool's order, and the terms of that
place (see docs/scheduling.md). Reads the policy's state; changes nothing but its own cache."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ...queue.text import count
from ..base import Explanation
from . import ordering
from .records import INF, N_TIERS, PENDING, WAITING, Job

if TYPE_CHECKING:  # pragma: no cover
    from .policy import FairShareScheduler


class Explainer:
    """Explanations of one policy's queued jobs; a pool's order is sorted once and kept until
    the queue or a share changes (``FairShareScheduler.order_epoch``), so explaining every
    queued job costs one sort, not one per job."""

    def __init__(self, policy: "FairShareScheduler") -> None:
        self.policy = policy
        self._positions: dict[str, tuple[int, dict[str, int]]] = {}  # pool -> (epoch, id -> position)

    def order(self, pool: str, now: float) -> list[Job]:
        """The pool's pending jobs in scheduling order (ignoring share changes within a pass):
        starved jobs oldest first, then tiers, users by share key, each user's oldest first."""
        policy = self.policy
        p = policy.pools[pool]
        queue = p.queue
        jobs, users = policy.jobs, policy.ledger.users
        starved = set()
        res: list[Job] = []
        if policy.knobs.reservations:
            for e in sorted(e for heap in queue.by_age.values() for e in heap):
                j = jobs.get(e.job_id)
                if (j is not None and j.state == PENDING and j.queue_version == e.queue_version
                        and ordering.starved(j.request, j.starve_after, now)):
                    res.append(j)
                    starved.add(j.request.id)
        for t in range(N_TIERS):
            mine = dict(queue.tier_lists(t))
            for _, name in sorted((users[n].share_key, n) for n in mine):
                res += [jobs[k[2]] for k in mine[name] if k[2] not in starved]
        return res

    def position(self, pool: str, job_id: str, now: float) -> int:
        """1-based place of a pending job in its pool's order."""
        epoch = self.policy.order_epoch
        hit = self._positions.get(pool)
        if hit is None or hit[0] != epoch:
            order = {x.request.id: i for i, x in enumerate(self.order(pool, now), 1)}
            hit = self._positions[pool] = (epoch, order)
        return hit[1][job_id]

    def priority_terms(self, job_id: str, now: float) -> dict[str, float]:
        """The terms of a job's place in the order (see docs/scheduling.md)."""
        policy = self.policy
        j = policy.jobs[job_id]
        req = j.request
        u = policy.ledger.users[req.user]
        tier = policy.tier_at(j, now)[0] if j.state == PENDING else j.tier
        scale = policy.ledger.scale(now)
        terms = {
            "tier": float(tier),
            "base_tier": float(2 * req.priority.rank),
            "starvation_boost": float(2 * req.priority.rank - tier),
            "starved": 1.0 if ordering.starved(req, j.starve_after, now) else 0.0,
            "usage_gpu_hours": round(policy.ledger.usage(req.user, now), 6),
            "weight": u.weight,
            "share_key": round(u.scaled / scale / u.weight, 6),
            "wait_s": max(0.0, now - req.submit_time),
        }
        if u.group is not None:
            terms["group_usage_gpu_hours"] = round(u.group.scaled / scale, 6)
            terms["group_weight"] = u.group.weight
            terms["group_share_key"] = round(u.group.scaled / scale / u.group.weight, 6)
        return terms

    def explain(self, job_id: str, now: float) -> Optional[Explanation]:
        """Reason code, 1-based position, priority terms and ETA of a queued job."""
        policy = self.policy
        j = policy.jobs.get(job_id)
        if j is None or j.state not in (PENDING, WAITING):
            return None
        terms = self.priority_terms(job_id, now)
        req = j.request
        pool = policy.pools[req.pool]
        if j.state == WAITING:
            return Explanation(
                "backoff", f"retrying after a failure, eligible in {req.not_before - now:.0f}s",
                0, terms, max(0.0, req.not_before - now),
            )
        pos = self.position(req.pool, job_id, now)
        eta: Optional[float] = None
        reserved = job_id in pool.reservations
        if reserved and pool.reservations[job_id] < INF:
            eta = max(0.0, pool.reservations[job_id] - now)
        reason, msg = j.reason, str(j.reason_message)
        nodes = pool.nodes
        if j.seen_in_pass != pool.pass_no and reason in ("reservation", "priority", "resources", "starved"):
            # the last pass stopped before it (nothing free could fit it): not its old message
            reason = "resources"
            msg = f"waiting for {count(req.gpus, 'GPU')} in pool {pool.name!r} ({nodes.free}/{nodes.total} free)"
        if reason == "requeued":  # preempted or lost, then queued again; no pass has given it a reason since
            what = msg.split(";")[0]
            if j.seen_in_pass != pool.pass_no:  # a pass went by and stopped before it
                msg = (f"{what}; queued again, waiting for {count(req.gpus, 'GPU')} in pool {pool.name!r} "
                       f"({nodes.free}/{nodes.total} free)")
            elif pos > 1:
                msg = f"{what}; queued again, {_ahead(pos)} in pool {pool.name!r}"
        elif not reserved and reason in ("new", "resources") and pos > 1:
            reason, msg = "priority", f"{_ahead(pos)} in pool {pool.name!r}"
        elif reason == "new":
            reason, msg = "pending", "waiting for the next scheduling pass"
        return Explanation(reason, msg, pos, terms, eta)


def _ahead(pos: int) -> str:
    """"1 job is ahead of it" / "N jobs are ahead of it" for the job at 1-based ``pos``."""
    return "1 job is ahead of it" if pos == 2 else f"{pos - 1} jobs are ahead of it"
