"""GPU bookkeeping shared by the policies: nodes, free GPU indices, gang placement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..queue.config import QueueConfig
from .base import Placement


@dataclass
class NodeState:
    """One node: its pool, GPU count, which indices are free, and whether it is up."""

    name: str
    pool: str
    gpus: int
    free: set[int] = field(default_factory=set)
    up: bool = True

    def __post_init__(self) -> None:
        if not self.free and self.up:
            self.free = set(range(self.gpus))


class Cluster:
    """All nodes by pool. Allocation is all-or-nothing (gang placement)."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}

    @classmethod
    def from_config(cls, config: QueueConfig, up: bool = True) -> "Cluster":
        """Nodes as the config declares them; ``up=False`` waits for workers to report."""
        c = cls()
        for pool, pc in config.pools.items():
            for node, gpus in pc.nodes.items():
                c.nodes[node] = NodeState(node, pool, gpus, up=up)
        return c

    def pool_nodes(self, pool: str) -> list[NodeState]:
        """The pool's nodes that are up."""
        return [n for n in self.nodes.values() if n.pool == pool and n.up]

    def capacity(self, pool: str) -> tuple[int, int]:
        """(total, free) GPUs of the pool's nodes that are up."""
        nodes = self.pool_nodes(pool)
        return sum(n.gpus for n in nodes), sum(len(n.free) for n in nodes)

    def place(self, pool: str, gpus: int, nodes: int = 1) -> Optional[Placement]:
        """A placement for the request, or None if it does not fit now. Does not allocate.

        One node: the fullest node that still fits (best fit, limits fragmentation).
        Several nodes: whole idle nodes with ``gpus / nodes`` GPUs each.
        """
        candidates = self.pool_nodes(pool)
        if nodes == 1:
            best: Optional[NodeState] = None
            for n in candidates:
                if len(n.free) >= gpus and (
                    best is None or (len(n.free), n.name) < (len(best.free), best.name)
                ):
                    best = n
            if best is None:
                return None
            return {best.name: tuple(sorted(best.free)[:gpus])}
        per = gpus // nodes
        idle = sorted(
            (n for n in candidates if len(n.free) == n.gpus and n.gpus >= per), key=lambda n: n.name
        )
        if len(idle) < nodes:
            return None
        return {n.name: tuple(sorted(n.free)[:per]) for n in idle[:nodes]}

    def check(self, placement: Placement) -> None:
        """Raise (RuntimeError; KeyError for a node it does not have) unless every GPU of the
        placement is free."""
        nodes = self.nodes
        for node, ids in placement.items():
            free = nodes[node].free
            if not free.issuperset(ids):
                raise RuntimeError(f"GPUs {ids} on {node} are not all free ({sorted(free)})")

    def allocate(self, placement: Placement) -> None:
        """Mark the placement's GPUs used. Raises if any is not free (a bug, never silent)."""
        self.check(placement)
        nodes = self.nodes
        for node, ids in placement.items():
            nodes[node].free.difference_update(ids)

    def release(self, placement: Placement) -> None:
        """Give the placement's GPUs back (ignored for nodes that are down or gone)."""
        for node, ids in placement.items():
            n = self.nodes.get(node)
            if n is not None and n.up:
                n.free.update(ids)
