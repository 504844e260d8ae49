"""Scheduler core: pure policies behind one protocol (see ``base.Scheduler``)."""

from ..queue.config import QueueConfig
from .base import (
    Decision,
    Explanation,
    JobRequest,
    NodeView,
    Placement,
    PoolPending,
    Preempt,
    Reject,
    Retry,
    Scheduler,
    Start,
    TimeOut,
    Warn,
)
from .fairshare import FairShareScheduler
from .fifo import FifoScheduler, unenforced

__all__ = [
    "Decision", "Explanation", "JobRequest", "NodeView", "Placement", "PoolPending", "Preempt",
    "Reject", "Retry", "Scheduler", "Start", "TimeOut", "Warn", "FairShareScheduler",
    "FifoScheduler", "POLICIES", "make_scheduler",
]

POLICIES = ("gpuqueue", "fifo")


def make_scheduler(config: QueueConfig, policy: str = "gpuqueue", baseline: bool = False) -> Scheduler:
    """The scheduler for ``policy`` ('gpuqueue' or 'fifo') over ``config``. FIFO (strict arrival
    order) enforces no quota: over a config that sets some it raises ValueError naming them,
    unless ``baseline`` (the simulator's comparison, where ignoring them is the point)."""
    if policy == "fifo":
        ignored = [] if baseline else unenforced(config)
        if ignored:
            raise ValueError(f"policy 'fifo' does not enforce {', '.join(ignored)}: use policy "
                             "'gpuqueue' (the default), or remove these limits from the config")
        return FifoScheduler(config, strict=True)
    if policy == "gpuqueue":
        return FairShareScheduler(config)
    raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
