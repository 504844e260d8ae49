"""Quotas: what a user may queue (checked at submit) and hold (checked before each start)."""

from __future__ import annotations

from typing import Optional

from ...queue.config import QueueConfig
from ...queue.text import count
from ..admission import over_cap
from ..base import JobRequest
from .ledger import Group, User
from .pool import Pool


def refusal(config: QueueConfig, pool: Pool, user: Optional[User], group_name: Optional[str],
            group: Optional[Group], job: JobRequest) -> Optional[str]:
    """Why a new job is refused by a quota or a queue depth limit, or None (``user`` and
    ``group``: the records of the job's user and of its group ``group_name``, if there are any
    yet: the group's limits hold from its first job on, before the policy has a record of it)."""
    capped = over_cap(job, config, group_name)  # the caps no job may pass, checked again at a rebuild
    if capped is not None:
        return capped
    lim = config.limits_for(job.user)
    queued = pool.queue.queued
    if queued >= pool.config.max_queued:
        return (f"pool {job.pool!r} queue is full ({queued} jobs, limit {pool.config.max_queued}); "
                "try again later or use another pool")
    mine = 0 if user is None else _queued(user)
    if mine >= lim.max_queued:
        return (f"you have {count(mine, 'queued job')}, the limit is {lim.max_queued}; "
                "wait for some to start or cancel some")
    gc = config.groups.get(group_name) if group_name is not None else None
    if gc is not None:
        members = list(group.members) if group is not None else []
        if user is not None and user not in members:  # a user moving into the group
            members.append(user)
        theirs = sum(_queued(m) for m in members)
        if gc.max_queued is not None and theirs >= gc.max_queued:
            return (f"group {group_name!r} has {count(theirs, 'queued job')}, its limit is {gc.max_queued}; "
                    "wait for some to start or cancel some")
    return None


def _queued(u: User) -> int:
    return sum(u.pool_jobs.values()) - u.running


def bounded(config: QueueConfig, pool: Pool, u: User) -> bool:
    """Whether any quota ``over_quota`` checks applies to the user's jobs in the pool (its own
    limits, the pool's per-user cap, its configured group's limits): where none does, starting
    a job never breaks one."""
    lim = u.limits
    if lim.max_running is not None or lim.max_gpus is not None or pool.config.max_gpus_per_user is not None:
        return True
    g = u.group
    gc = config.groups.get(g.name) if g is not None and g.configured else None
    return gc is not None and (gc.max_running is not None or gc.max_gpus is not None)


def over_quota(config: QueueConfig, pool: Pool, u: User, req: JobRequest) -> Optional[tuple[str, str]]:
    """(reason code, message) when starting the job now would break a quota, else None."""
    lim = u.limits
    if lim.max_running is not None and u.running + 1 > lim.max_running:
        return "quota_running", f"you have {count(u.running, 'job')} running, your limit is {lim.max_running}"
    if lim.max_gpus is not None and u.gpus + req.gpus > lim.max_gpus:
        return "quota_gpus", f"you hold {count(u.gpus, 'GPU')}, your limit is {lim.max_gpus}"
    cap = pool.config.max_gpus_per_user
    held = u.pool_gpus.get(pool.name, 0)
    if cap is not None and held + req.gpus > cap:
        return "quota_pool_gpus", f"you hold {count(held, 'GPU')} in pool {pool.name!r}, its per-user limit is {cap}"
    g = u.group
    gc = config.groups.get(g.name) if g is not None and g.configured else None
    if gc is not None:
        if gc.max_running is not None and g.running + 1 > gc.max_running:  # type: ignore[union-attr]
            return "quota_group_running", f"group {g.name!r} runs {count(g.running, 'job')}, its limit is {gc.max_running}"  # type: ignore[union-attr]
        if gc.max_gpus is not None and g.gpus + req.gpus > gc.max_gpus:  # type: ignore[union-attr]
            return "quota_group_gpus", f"group {g.name!r} holds {count(g.gpus, 'GPU')}, its limit is {gc.max_gpus}"  # type: ignore[union-attr]
    return None
