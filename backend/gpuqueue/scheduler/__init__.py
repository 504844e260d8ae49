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
from .fifo import FifoScheduler

__all__ = [
    "Decision", "Explanation", "JobRequest", "NodeView", "Placement", "PoolPending", "Preempt",
    "Reject", "Retry", "Scheduler", "Start", "TimeOut", "Warn", "FairShareScheduler",
    "FifoScheduler", "POLICIES", "make_scheduler",
]

POLICIES = ("gpuqueue", "fifo")


def make_scheduler(config: QueueConfig, policy: str = "gpuqueue") -> Scheduler:
    """The scheduler for ``policy`` ('gpuqueue' or 'fifo') over ``config``."""
    if policy == "fifo":
        return FifoScheduler(config, strict=True)
    if policy == "gpuqueue":
        return FairShareScheduler(config)
    raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
