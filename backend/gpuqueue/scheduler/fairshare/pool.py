"""A pool as the fair-share policy tracks it: its queue, its nodes, and the state of its passes,
reservation and preemption budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ...config import PoolConfig
from .nodes import PoolNodes
from .queue import PoolQueue
from .records import INF


@dataclass(eq=False)
class Pool:
    """One pool (see the module docstring)."""

    name: str
    config: PoolConfig
    queue: PoolQueue
    nodes: PoolNodes
    pass_no: int = 0  # bumps at each pass; a job's reason is current if it was seen in this one
    dirty: bool = True  # something changed since the last pass
    recheck_at: float = INF  # a pass is due then even if nothing changes (preemption waits)
    tokens: float = 0.0  # preemption budget (token bucket)
    tokens_at: float = 0.0
    active_weight: float = 0.0  # sum of the weights of users with jobs here (pending or running)
    timed_running: int = 0  # running jobs with a time limit, plus stopping ones
    victim_epoch: int = 0  # bumps when a preemptible job starts
    # (reserved job, victim_epoch, retry time) of the last preemption plan that found nothing
    last_failed_plan: tuple[str, int, float] = ("", -1, 0.0)
    reserved_for: Optional[str] = None  # the job the last pass reserved GPUs for
    shadow: float = INF  # its expected start, when known
    # running or stopping jobs of a preemptible kind, by priority rank (high, medium, low)
    victims_by_rank: list[set[str]] = field(default_factory=lambda: [set(), set(), set()])
