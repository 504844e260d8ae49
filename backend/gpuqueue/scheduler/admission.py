"""Admission checks every policy applies at submit: can this job ever run here?"""

from __future__ import annotations

from typing import Optional

from ..queue.config import PoolConfig, QueueConfig
from ..queue.durations import format_duration
from ..queue.text import count
from .base import JobRequest


_SIZES: dict[int, tuple[PoolConfig, dict[str, int], list[int]]] = {}


def _sizes(pc: PoolConfig) -> list[int]:
    """The pool's node sizes, biggest first (kept per pool config while its nodes stay)."""
    hit = _SIZES.get(id(pc))
    if hit is None or hit[0] is not pc or hit[1] is not pc.nodes:
        hit = _SIZES[id(pc)] = (pc, pc.nodes, sorted(pc.nodes.values(), reverse=True))
    return hit[2]


def inadmissible(job: JobRequest, config: QueueConfig) -> Optional[str]:
    """A sentence saying why ``job`` can never run in its pool, or None if it can: an unknown
    pool, too many GPUs for its nodes, a time limit over the pool's maximum."""
    pc = config.pools.get(job.pool)
    if pc is None:
        return _unknown_pool(job, config)
    sizes = _sizes(pc)
    if not sizes:  # a pool of whatever workers join (no --config), none yet: the job waits for one
        return None
    if job.nodes == 1 and job.gpus <= sizes[0] and (
            pc.max_runtime is None or job.time_limit is None or job.time_limit <= pc.max_runtime):
        return None  # the common case
    return _too_big(job, sizes) or _too_long(job, pc, config)


def never_runs(job: JobRequest, config: QueueConfig, nodes_known: bool = True) -> Optional[str]:
    """Why a job the queue took under an earlier config can never run under ``config``, or None:
    what :func:`inadmissible` checks at a submit (the pool's nodes only where ``nodes_known``:
    the config lists every node its pools will have), and the GPU caps no job of the user may
    pass whatever runs (:func:`over_cap`). Not the limits that change with time (how many jobs
    the user or the pool has queued, what the user holds): a job they hold back may wait.
    For a rebuild: the one who submitted it is told, instead of it waiting for ever."""
    pc = config.pools.get(job.pool)
    if pc is None:
        return _unknown_pool(job, config)
    group = job.group if job.group is not None else config.group_of(job.user)
    return ((inadmissible(job, config) if nodes_known else _too_long(job, pc, config))
            or over_cap(job, config, group or None))


def over_cap(job: JobRequest, config: QueueConfig, group: Optional[str]) -> Optional[str]:
    """A sentence when the job asks more GPUs than a cap of the config lets one job of its user
    hold, whatever else runs: the user's ``max_gpus``, its pool's ``max_gpus_per_user``, its
    ``group``'s ``max_gpus``; None if none is passed."""
    lim = config.limits_for(job.user)
    if lim.max_gpus is not None and job.gpus > lim.max_gpus:
        return f"{count(job.gpus, 'GPU')} is over your quota of {count(lim.max_gpus, 'GPU')}; ask for at most {lim.max_gpus}"
    pc = config.pools.get(job.pool)
    cap = pc.max_gpus_per_user if pc is not None else None
    if cap is not None and job.gpus > cap:
        return f"{count(job.gpus, 'GPU')} is over pool {job.pool!r}'s per-user limit of {cap}; ask for at most {cap}"
    gc = config.groups.get(group) if group is not None else None
    if gc is not None and gc.max_gpus is not None and job.gpus > gc.max_gpus:
        return (f"{count(job.gpus, 'GPU')} is over group {group!r}'s quota of {count(gc.max_gpus, 'GPU')}; "
                f"ask for at most {gc.max_gpus}")
    return None


def _unknown_pool(job: JobRequest, config: QueueConfig) -> str:
    return f"unknown pool {job.pool!r}: the pools are {', '.join(sorted(config.pools))}"


def _too_big(job: JobRequest, sizes: list[int]) -> Optional[str]:
    """Why the job's GPUs do not fit the pool's nodes (``sizes``, biggest first), or None."""
    if job.nodes == 1:
        biggest = sizes[0]
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
        return None
    per = job.gpus // job.nodes
    fit = sum(1 for s in sizes if s >= per)
    if fit >= job.nodes:
        return None
    if not fit:
        return (f"{per} GPUs on each node do not fit pool {job.pool!r} (its largest node has {sizes[0]}); "
                f"ask for at most {sizes[0]} GPUs per node (--gpus {sizes[0] * job.nodes} over {job.nodes} nodes)")
    what = f"{job.nodes} nodes with {per} GPUs each" if per else f"{job.nodes} nodes"
    nodes = f"{fit} node{'s' if fit != 1 else ''}"
    held = nodes + (f" with {per} or more GPUs" if per else "")
    return f"{what} do not fit pool {job.pool!r}: it has {held}; ask for at most {nodes}"


def _too_long(job: JobRequest, pc: PoolConfig, config: QueueConfig) -> Optional[str]:
    """Why the job's time limit is over its pool's maximum run, or None."""
    if pc.max_runtime is not None and job.time_limit is not None and job.time_limit > pc.max_runtime:
        pools = ", ".join(sorted(config.pools))
        return (
            f"time limit {format_duration(job.time_limit)} is over pool {job.pool!r}'s maximum "
            f"of {format_duration(pc.max_runtime)}: ask for less, or use another pool ({pools})"
        )
    return None
