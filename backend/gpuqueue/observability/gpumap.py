"""The cluster at a glance, for the queue summary (``GET /gpuqueue/api/queue``): which GPU of
which node runs whose job (``gpu_map``), and the caller's own fair-share standing (``share``).

One builder (``cluster_view``) serves both modes; ``embedded_view`` and ``redis_view`` only
gather its inputs: the configured nodes, the nodes that are up, the jobs that hold GPUs (their
attempt's ``placement``), the scheduler snapshot's per-user usage and the config's weights.

Privacy: a user sees her own jobs on the map (id, name); another user's GPU is only ``busy``,
with no job, name or owner, so nobody learns what others run. An admin sees every job's id,
name and owner.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any, Iterable, Mapping, Optional

from ..queue.config import QueueConfig
from ..queue.models import JobRecord
from ..queue.states import JobState

HOLDING = (JobState.STARTING, JobState.RUNNING)


def gpu_map(
    config: Optional[QueueConfig],
    up: Optional[Mapping[str, Mapping[str, Any]]],
    jobs: Iterable[JobRecord],
    caller: Any,
) -> list[dict[str, Any]]:
    """Nodes by pool (the config's order, then nodes only seen up), each with its GPUs.

    ``up``: node -> {"pool", "gpus"} of the nodes known to be up (None: all configured nodes
    are up, as in embedded mode). Each GPU is ``{"index", "state", "job"}`` with state ``free``,
    ``mine`` (the caller's job), ``busy`` (another user's) or ``down`` (its node is not up);
    ``job`` is ``{"id", "name", "owner", "priority"}`` for the caller's own jobs (all jobs for
    an admin), else None.
    """
    nodes: dict[str, dict[str, Any]] = {}
    for pool, pc in (config.pools.items() if config else ()):
        for name, count in pc.nodes.items():
            nodes[name] = {"node": name, "pool": pool, "up": up is None or name in up, "gpus": count}
    for name, seen in (up or {}).items():
        n = nodes.setdefault(name, {"node": name, "pool": seen.get("pool"), "up": True, "gpus": 0})
        n["gpus"] = int(seen.get("gpus", n["gpus"]))
    held: dict[tuple[str, int], JobRecord] = {}
    for job in jobs:
        a = job.current_attempt
        if job.state in HOLDING and a is not None:
            for node, ids in a.placement.items():
                for i in ids:
                    held[(node, i)] = job
    out = []
    for n in nodes.values():
        gpus = []
        for i in range(n["gpus"]):
            holder = held.get((n["node"], i))
            mine = holder is not None and holder.owner == caller.name
            state = "mine" if mine else "busy" if holder is not None else "free" if n["up"] else "down"
            shown = None
            if holder is not None and (mine or caller.admin):
                shown = {"id": holder.id, "name": holder.spec.name, "owner": holder.owner,
                         "priority": holder.spec.priority.value}
            gpus.append({"index": i, "state": state, "job": shown})
        out.append({"node": n["node"], "pool": n["pool"], "up": n["up"], "gpus": gpus})
    return out


def share(config: Optional[QueueConfig], users: Optional[Mapping[str, Mapping[str, Any]]],
          caller: Any) -> Optional[dict[str, Any]]:
    """The caller's fair-share standing, or None where the policy keeps no usage (fifo).

    ``usage_gpu_hours`` is the decayed usage, ``weight`` the configured weight; the queue
    orders users by usage per weight, lowest first, and ``place`` is the caller's place in that
    order among the ``of`` users the scheduler knows (ties share a place)."""
    if users is None:
        return None

    def weight(user: str) -> float:
        return config.limits_for(user).weight if config else 1.0

    mine = users.get(caller.name) or {}
    usage = float(mine.get("usage_gpu_hours") or 0.0)
    key = usage / weight(caller.name)
    others = [float(u.get("usage_gpu_hours") or 0.0) / weight(n)
              for n, u in users.items() if n != caller.name]
    return {
        "usage_gpu_hours": round(usage, 4),
        "weight": weight(caller.name),
        "half_life_s": config.policy.half_life if config else None,
        "gpus_held": int(mine.get("gpus") or 0),
        "running": int(mine.get("running") or 0),
        "place": 1 + sum(1 for k in others if k < key - 1e-9),
        "of": 1 + len(others),
    }


def cluster_view(config: Optional[QueueConfig], up: Optional[Mapping[str, Mapping[str, Any]]],
                 jobs: Iterable[JobRecord], snapshot: Mapping[str, Any], caller: Any) -> dict[str, Any]:
    """``{"gpu_map": [...], "share": {...} | None}`` for the queue summary."""
    return {"gpu_map": gpu_map(config, up, jobs, caller), "share": share(config, snapshot.get("users"), caller)}


def embedded_view(service: Any, snapshot: Mapping[str, Any], caller: Any) -> dict[str, Any]:
    """``cluster_view`` of the embedded queue (``QueueService``): its config's nodes, all up."""
    jobs = service.store.list(states=HOLDING, limit=100_000)
    return cluster_view(service.config, None, jobs, snapshot, caller)


REDIS_READ_EVERY_S = 1.0
_holding: "weakref.WeakKeyDictionary[Any, tuple[float, list[JobRecord]]]" = weakref.WeakKeyDictionary()
_holding_lock = threading.Lock()


def redis_view(store: Any, config: Optional[QueueConfig], snapshot: Mapping[str, Any],
               caller: Any) -> dict[str, Any]:
    """``cluster_view`` of the cluster's store: nodes up as the daemon's snapshot says, and the
    jobs holding GPUs (live but not waiting: one ``SDIFF`` of the store's indexes, then only
    those records), read at most once per ``REDIS_READ_EVERY_S`` per API process however many
    sidebars ask."""
    now = time.monotonic()
    with _holding_lock:
        at, jobs = _holding.get(store, (-1e9, []))
        if now - at >= REDIS_READ_EVERY_S:
            pools = list(config.pools) if config else []
            waiting = [store.k("waitpool", ""), *(store.k("waitpool", p) for p in pools)]
            jobs = store.get_jobs(sorted(store.r.sdiff([store.k("active"), *waiting])))
            _holding[store] = (now, jobs)
    return cluster_view(config, snapshot.get("nodes") or {}, jobs, snapshot, caller)
