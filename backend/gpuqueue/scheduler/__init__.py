"""Scheduler core: pure policies behind one protocol (see ``base.Scheduler``)."""

from ..config import QueueConfig
from .base import (  # noqa: F401
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
from .fairshare import FairShareScheduler  # noqa: F401
from .fifo import FifoScheduler  # noqa: F401

POLICIES = ("gpuqueue", "fifo")


def make_scheduler(config: QueueConfig, policy: str = "gpuqueue") -> Scheduler:
    """The scheduler for ``policy`` ('gpuqueue' or 'fifo') over ``config``."""
    if policy == "fifo":
        return FifoScheduler(config, strict=True)
    if policy == "gpuqueue":
        return FairShareScheduler(config)
    raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
