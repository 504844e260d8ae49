"""A pool as the fair-share policy tracks it: its queue, its nodes, and the state of its passes,
reservation and preemption budget."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional
from ...queue.config import PoolConfig
from .nodes import PoolNodes
from .queue import PoolQueue
from .records import INF
from .reservations import Held


class FailedPlan(NamedTuple):
    """A preemption plan that found no victims: nothing to try again until a node changes (it
    was tried on every node then) or ``retry_at`` (a young job comes of age)."""

    signature: Optional[tuple]  # what else it depended on; None: it waits for the budget
    touches: int  # NodeIndex.touches then
    retry_at: float


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
    freed_epoch: int = 0  # bumps when GPUs are freed or nodes change
    starved_epoch: int = 0  # bumps when a starved job joins or leaves the queue
    starved_cache: Any = None  # the last pass's reservations for starved jobs (SchedulingPass)
    # the shape of a reserved job -> the last preemption plan for that shape that found nothing
    # (or more victims than the budget allowed)
    failed_plans: dict[tuple, "FailedPlan"] = field(default_factory=dict)
    # the jobs the last pass reserved GPUs for -> their expected start (INF: unknown)
    reservations: dict[str, float] = field(default_factory=dict)
    # starved job -> the nodes it was reserved last (it keeps them while it waits)
    held: dict[str, Held] = field(default_factory=dict)
    # running or stopping jobs of a preemptible kind, by priority rank (high, medium, low)
    victims_by_rank: list[set[str]] = field(default_factory=lambda: [set(), set(), set()])
    # user -> whether no quota can hold its jobs back here (SchedulingPass.quota_free)
    quota_free: dict[str, bool] = field(default_factory=dict)
