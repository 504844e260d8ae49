"""A pending job's place in the order before fair share: its priority tier, raised by waiting
(the starvation boost), when it starves, and when that changes next (a boost, or the job
starving)."""

from __future__ import annotations

from ...queue.config import PolicyConfig
from ..base import JobRequest
from .records import INF


def starve_after(req: JobRequest, starvation_timeout: float, knobs: PolicyConfig) -> float:
    """Seconds of waiting after which the job is *starved* (0: never): it then goes first, and
    GPUs are set aside for it (see ``scheduling_pass``). A job that needs several GPUs on a node
    starves after the pool's ``starvation_timeout``: a stream of smaller jobs could keep every
    node partly busy forever. A job of one GPU a node takes any GPU that frees up, so fair share
    serves it; it starves only after ``oldest_first_after``."""
    if req.gpus > req.nodes:
        return starvation_timeout if starvation_timeout > 0 else 0.0
    return knobs.oldest_first_after


def starved(req: JobRequest, after: float, now: float) -> bool:
    """Whether the job has waited ``after`` seconds (``starve_after``; 0: never starves)."""
    return after > 0 and req.submit_time + after <= now


def tier_at(req: JobRequest, starvation_timeout: float, after: float, knobs: PolicyConfig,
            now: float) -> tuple[int, float]:
    """(tier, time of the job's next change of place or INF).

    ``tier = 0`` for high, ``2`` for medium, ``4`` for low, lowered by one step per
    ``starvation_timeout`` waited, at most ``starvation_boost_cap`` steps and never to 0 (fresh
    high work stays first). The next change is the next boost, or the moment the job starves
    (``after`` seconds, see ``starve_after``)."""
    rank = req.priority.rank
    timeout = starvation_timeout
    starve = req.submit_time + after if after > 0 and req.submit_time + after > now else INF
    if timeout <= 0:
        return 2 * rank, starve
    if req.submit_time + timeout > now:  # the common case: not waited a timeout yet
        return 2 * rank, min(req.submit_time + timeout, starve)
    if rank == 0:
        return 0, starve
    steps = int(max(0.0, now - req.submit_time) // timeout)
    # float-safe: the step count must agree with submit + k * timeout <= now
    while req.submit_time + (steps + 1) * timeout <= now:
        steps += 1
    while steps > 0 and req.submit_time + steps * timeout > now:
        steps -= 1
    cap = knobs.starvation_boost_cap
    boost = min(steps, cap)
    tier = max(2 * rank - boost, 1)
    final = tier == 1 or boost >= cap
    return tier, min(starve, INF if final else req.submit_time + (steps + 1) * timeout)
