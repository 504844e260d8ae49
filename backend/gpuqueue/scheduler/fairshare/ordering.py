"""A pending job's place in the order before fair share: its priority tier, raised by waiting
(the starvation boost), and when that changes next (a boost, or the job starving)."""

from __future__ import annotations

from ...config import PolicyConfig
from ..base import JobRequest
from .records import INF


def tier_at(req: JobRequest, starvation_timeout: float, knobs: PolicyConfig, now: float) -> tuple[int, float]:
    """(tier, time of the job's next change of place or INF).

    ``tier = 0`` for high, ``2`` for medium, ``4`` for low, lowered by one step per
    ``starvation_timeout`` waited, at most ``starvation_boost_cap`` steps and never to 0 (fresh
    high work stays first). The next change is the next boost, or the moment the job has
    waited ``starvation_timeout`` (it then gets GPUs set aside, see ``scheduling_pass``)."""
    rank = req.priority.rank
    timeout = starvation_timeout
    if timeout <= 0:
        return 2 * rank, INF
    starve = req.submit_time + timeout
    if starve > now:  # the common case: not waited a timeout yet
        return 2 * rank, starve
    if rank == 0:
        return 0, INF
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
    return tier, INF if final else req.submit_time + (steps + 1) * timeout


def starved(req: JobRequest, starvation_timeout: float, now: float) -> bool:
    """Whether the job has waited its pool's starvation timeout (0: never starves)."""
    return starvation_timeout > 0 and req.submit_time + starvation_timeout <= now
