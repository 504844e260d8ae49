"""Admission checks every policy applies at submit: can this job ever run here?"""

from __future__ import annotations

from typing import Optional

from ..config import QueueConfig
from ..durations import format_duration
from .base import JobRequest
from .cluster import Cluster


def inadmissible(job: JobRequest, config: QueueConfig, cluster: Cluster) -> Optional[str]:
    """A sentence saying why ``job`` can never run in its pool, or None if it can."""
    pc = config.pools.get(job.pool)
    if pc is None:
        return f"unknown pool {job.pool!r}: the pools are {', '.join(sorted(config.pools))}"
    if job.nodes == 1 and job.gpus <= 1 and pc.nodes and (
            pc.max_runtime is None or job.time_limit is None or job.time_limit <= pc.max_runtime):
        return None  # the common case, without sorting the nodes
    pools = ", ".join(sorted(config.pools))
    sizes = sorted(pc.nodes.values(), reverse=True)
    if job.nodes == 1:
        biggest = sizes[0] if sizes else 0
        if job.gpus > biggest:
            hint = (
                f"; ask for at most {biggest}"
                if len(sizes) == 1
                else f"; ask for at most {biggest}, or spread over nodes with --nodes"
            )
            return (
                f"{job.gpus} GPUs do not fit on one node of pool {job.pool!r} "
                f"(its largest node has {biggest}){hint}"
            )
    else:
        per = job.gpus // job.nodes
        fit = sum(1 for s in sizes if s >= per)
        if fit < job.nodes:
            return (
                f"pool {job.pool!r} has {fit} nodes with {per} GPUs each, "
                f"{job.nodes} were asked for"
            )
    if pc.max_runtime is not None and job.time_limit is not None and job.time_limit > pc.max_runtime:
        return (
            f"time limit {format_duration(job.time_limit)} is over pool {job.pool!r}'s maximum "
            f"of {format_duration(pc.max_runtime)}: ask for less, or use another pool ({pools})"
        )
    return None
