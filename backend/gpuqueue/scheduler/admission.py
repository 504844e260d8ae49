"""Admission checks every policy applies at submit: can this job ever run here?"""

from __future__ import annotations

from typing import Optional

from ..queue.config import PoolConfig, QueueConfig
from ..queue.durations import format_duration
from .base import JobRequest


_SIZES: dict[int, tuple[PoolConfig, dict[str, int], list[int]]] = {}


def _sizes(pc: PoolConfig) -> list[int]:
    """The pool's node sizes, biggest first (kept per pool config while its nodes stay)."""
    hit = _SIZES.get(id(pc))
    if hit is None or hit[0] is not pc or hit[1] is not pc.nodes:
        hit = _SIZES[id(pc)] = (pc, pc.nodes, sorted(pc.nodes.values(), reverse=True))
    return hit[2]


def inadmissible(job: JobRequest, config: QueueConfig) -> Optional[str]:
    """A sentence saying why ``job`` can never run in its pool, or None if it can."""
    pc = config.pools.get(job.pool)
    if pc is None:
        return f"unknown pool {job.pool!r}: the pools are {', '.join(sorted(config.pools))}"
    sizes = _sizes(pc)
    if not sizes:  # a pool of whatever workers join (no --config), none yet: the job waits for one
        return None
    if job.nodes == 1 and sizes and job.gpus <= sizes[0] and (
            pc.max_runtime is None or job.time_limit is None or job.time_limit <= pc.max_runtime):
        return None  # the common case
    pools = ", ".join(sorted(config.pools))
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
