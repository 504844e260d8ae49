"""The scheduler daemon's view of the nodes: their workers' heartbeats in Redis bring a node up
in the scheduler (in its pool: the config's, else the worker's ``--pool``), and a node whose
heartbeat lapses, or whose worker stopped or restarted, is lost: its jobs are queued again."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..queue.config import QueueConfig
from ..queue.models import JobRecord
from ..scheduler.base import Decision, Retry
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.daemon")


@dataclass
class NodeSeen:
    """What the daemon knows of one node's heartbeats."""

    instance: str
    pool: str
    gpus: int
    beat: Any
    last_change: float  # monotonic
    running: Optional[frozenset[str]] = None  # "<job>:<attempt>" its last beat lists (None: not said)
    launching: Optional[frozenset[str]] = None  # those it lists as claimed, being launched (None: an older worker)
    beats: int = 0  # new beats seen from this instance (daemon_reconcile.py counts them)
    cordoned: bool = False  # its worker is stopping: no new job is placed there


class Nodes:
    """The daemon's part that follows the nodes' heartbeats (a mixin of ``Daemon``, which sets
    the attributes below and settles the lost nodes' attempts)."""

    store: RedisStore
    config: QueueConfig
    config_lists_nodes: bool
    scheduler: Any
    nodes: dict[str, NodeSeen]
    lost_beats: dict[str, tuple[str, Any]]
    node_timeout: float

    if TYPE_CHECKING:
        def _publish_config(self) -> None: ...

        def _find(self, job_id: str) -> Optional[JobRecord]: ...

        def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any],
                         decisions: Optional[list[Decision]] = None) -> None: ...

    def _check_nodes(self, initial: bool = False) -> None:
        st = self.store
        names = sorted(st.r.smembers(st.k("nodes")))
        beats = st.r.mget([st.k("hb", n) for n in names]) if names else []
        now_m = time.monotonic()
        for name, raw in zip(names, beats):
            seen = self.nodes.get(name)
            if raw is None:
                continue
            hb = json.loads(raw)
            if seen is not None and seen.instance == hb["instance"]:
                if hb.get("seq") != seen.beat:
                    seen.beat, seen.last_change = hb.get("seq"), now_m
                    seen.running, seen.launching = _listed(hb, "running"), _listed(hb, "launching")
                    seen.beats += 1
                if hb.get("stopping") and not seen.cordoned:
                    self._cordon(name, seen)
                continue
            if initial and hb.get("stopped"):
                continue
            if seen is None and self.lost_beats.get(name) == (hb["instance"], hb.get("seq")):
                continue  # the beat the node was found lost with: it is still down
            if seen is not None:  # the worker restarted: its old runners died with it
                log.warning("node %s restarted (instance %s)", name, hb["instance"])
                self._node_lost(name, "restarted: the job's processes ended with its old worker")
            if hb.get("stopped"):
                continue
            pool = self._pool_of(name, hb.get("pool"), int(hb["gpus"]))
            self.nodes[name] = NodeSeen(hb["instance"], pool, int(hb["gpus"]), hb.get("seq"), now_m,
                                        _listed(hb, "running"), _listed(hb, "launching"))
            self.lost_beats.pop(name, None)
            self.scheduler.node_up(name, pool, int(hb["gpus"]), time.time())
            log.info("node %s up: %s GPUs in pool %s", name, hb["gpus"], pool)
            if hb.get("stopping"):  # its worker began to stop before this daemon saw it
                self._cordon(name, self.nodes[name])
            if not initial:
                self._publish_config()
        for name, seen in list(self.nodes.items()):
            raw = beats[names.index(name)] if name in names else None
            stopped = raw is not None and json.loads(raw).get("stopped") and json.loads(raw)["instance"] == seen.instance
            if stopped or now_m - seen.last_change > self.node_timeout:
                log.warning("node %s lost (%s)", name, "worker stopped" if stopped else "heartbeat lapsed")
                self._node_lost(name, "was stopped (its worker shut down) before it reported this job's end" if stopped else
                                f"stopped answering: no heartbeat from its worker for {self.node_timeout:g}s "
                                "(a crash, a reboot or a network cut)")

    def _cordon(self, name: str, seen: NodeSeen) -> None:
        """Node ``name``'s worker is stopping (its beats say so, before it stops its jobs): no job
        is placed there any more, so that none of those it stops is sent back to it; its jobs
        end as they report, and the node is gone when the worker signs off."""
        seen.cordoned = True
        self.scheduler.node_cordon(name, time.time())
        log.info("node %s is stopping: no new job goes there", name)

    def _pool_of(self, node: str, wanted: Optional[str], gpus: int) -> str:
        """The node's pool: the config's, else the worker's ``--pool`` (or the default pool),
        which then lists it so admission checks count its GPUs."""
        for pname, pc in self.config.pools.items():
            if node in pc.nodes:
                if self.config_lists_nodes and pc.nodes[node] != gpus:
                    log.warning("node %s offers %d GPUs, the config lists %d: the queue uses the %d it offers; "
                                "correct the config or the worker's --gpus", node, gpus, pc.nodes[node], gpus)
                return pname
        pool = wanted if wanted in self.config.pools else self.config.default_pool
        if wanted and wanted != pool:
            log.warning("node %s: its worker's --pool %s is no pool of the config (%s): it joins pool %s; "
                        "restart the worker with one of those", node, wanted, ", ".join(self.config.pools), pool)
        elif not wanted and self.config_lists_nodes:
            log.warning("node %s is in no pool's nodes in the config: it joins pool %s (the first) with its %d GPUs; "
                        "list it under [pools.NAME] nodes, or start its worker with --pool NAME", node, pool, gpus)
        pc = self.config.pools[pool]
        pc.nodes = {**pc.nodes, node: gpus}  # a new dict: admission checks cache node sizes per dict
        return pool

    def _node_lost(self, name: str, why: str) -> None:
        """Node ``name`` is gone (``why``, in words after its name): its attempts end lost and
        their jobs are queued again; the attempt's message and the job's stream say why."""
        seen = self.nodes.pop(name, None)
        if seen is None:
            return
        self.lost_beats[name] = (seen.instance, seen.beat)
        decisions = self.scheduler.node_down(name, time.time())
        for d in decisions:
            if isinstance(d, Retry):
                job = self._find(d.job_id)
                if job and job.state.is_active:
                    self._end_attempt(job, {"exit_code": None, "lost": True, "error": f"node {name} {why}"},
                                      decisions=[d])


def _listed(hb: dict[str, Any], what: str) -> Optional[frozenset[str]]:
    """The attempts a heartbeat lists under ``what`` ("running", "launching"; "<job>:<attempt>"),
    None if it has no such list at all (a worker of a version that does not say)."""
    listed = hb.get(what)
    return frozenset(str(x) for x in listed) if isinstance(listed, list) else None
