"""A pending job's place in the order before fair share: its priority tier, raised by waiting
(the starvation boost), and whether it has *aged* (waited past ``oldest_first_after``)."""

from __future__ import annotations

from ...config import PolicyConfig
from ..base import JobRequest
from .records import INF


def tier_at(req: JobRequest, starvation_timeout: float, knobs: PolicyConfig, now: float) -> tuple[int, bool, float]:
    """(tier, aged, time of the job's next change of place or INF).

    ``tier = 0`` for high, ``2`` for medium, ``4`` for low, lowered by one step per
    ``starvation_timeout`` waited, at most ``starvation_boost_cap`` steps and never to 0 (fresh
    high work stays first). ``aged``: waited past ``oldest_first_after``, so the job goes before
    the non-aged jobs of its tier, oldest first."""
    rank = req.priority.rank
    after = knobs.oldest_first_after
    aged = after > 0 and req.submit_time + after <= now
    t_aged = req.submit_time + after if after > 0 and not aged else INF
    timeout = starvation_timeout
    if rank == 0 or timeout <= 0:
        return (0 if rank == 0 else 2 * rank), aged, t_aged
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
    t_boost = INF if final else req.submit_time + (steps + 1) * timeout
    return tier, aged, min(t_boost, t_aged)
