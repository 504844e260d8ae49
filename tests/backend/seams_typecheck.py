"""Checked by mypy (tests/backend/test_types.py), never run: each implementation of the queue's
verbs is a ``QueueVerbs``, and each scheduling policy a ``Scheduler``."""

from __future__ import annotations

from gpuqueue.cluster.frontend import ClusterFrontend
from gpuqueue.embedded.service import QueueService
from gpuqueue.queue.verbs import QueueVerbs
from gpuqueue.scheduler.base import Scheduler
from gpuqueue.scheduler.fairshare import FairShareScheduler
from gpuqueue.scheduler.fifo import FifoScheduler
from jupyter_gpuqueue.remote import RemoteService


def embedded(s: QueueService) -> QueueVerbs:
    """The embedded queue has every verb."""
    return s


def cluster(s: ClusterFrontend) -> QueueVerbs:
    """The cluster's API service has every verb."""
    return s


def remote(s: RemoteService) -> QueueVerbs:
    """The Jupyter server's forwarder to the API service has every verb."""
    return s


def fair_share(s: FairShareScheduler) -> Scheduler:
    """The default policy is a Scheduler."""
    return s


def fifo(s: FifoScheduler) -> Scheduler:
    """Strict FIFO is a Scheduler."""
    return s
