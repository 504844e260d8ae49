"""The cost of a drain (``drain_charge``): the GPU-time that nodes held for a starved job sat
idle until it started there, charged to its user (and group) when it starts.

Each node's idle GPU-seconds are an integral, brought up to date whenever its free count is
about to change (``before_change``), so reading it at any time costs nothing per pass. A
starved job's reservation marks where the integral of each of its nodes stood when it first
held that node (``hold``), and closes a node's span when a later plan moves the reservation
off it; when the job starts, ``take`` returns the idle GPU-seconds of every node it held while
it held it, at most the GPUs it needs there over that time (spare GPUs left idle were not held
for it). A span stays open while the job keeps the nodes, also through passes whose caps left
it without a reservation.
"""

from __future__ import annotations

from ..cluster import NodeState


class DrainMeter:
    """Idle GPU-seconds per node, and per reserved starved job where they stood when it took
    each of the nodes it holds, and the idle GPU-seconds of the nodes it held before."""

    __slots__ = ("nodes", "area", "marks", "sums")

    def __init__(self, nodes: dict[str, NodeState]) -> None:
        self.nodes = nodes  # the cluster's nodes by name
        self.area: dict[str, tuple[float, float]] = {}  # node -> (idle GPU-seconds up to t, t)
        self.marks: dict[str, dict[str, tuple[float, float]]] = {}  # job id -> node -> (idle, t)
        self.sums: dict[str, float] = {}  # job id -> idle GPU-seconds of nodes it held before

    def idle(self, n: NodeState, now: float) -> float:
        """The node's idle GPU-seconds from the first time it was seen until ``now``."""
        a, t = self.area.get(n.name, (0.0, now))
        return a + len(n.free) * (now - t)

    def before_change(self, n: NodeState, now: float) -> None:
        """The node's free GPUs are about to change at ``now``: close the span so far."""
        self.area[n.name] = (self.idle(n, now), now)

    def hold(self, job_id: str, per: int, nodes: list[str], now: float) -> None:
        """The starved job's reservation holds these nodes now: mark those it did not hold,
        and close the nodes it no longer holds (their idle GPU-seconds since it took them, at
        most ``per`` GPUs each, go to its sum)."""
        m = self.marks.setdefault(job_id, {})
        for name in [name for name in m if name not in nodes]:
            self._close(job_id, m.pop(name), name, per, now)
        for name in nodes:
            if name not in m:
                m[name] = (self.idle(self.nodes[name], now), now)

    def _close(self, job_id: str, mark: tuple[float, float], name: str, per: int, now: float) -> None:
        n = self.nodes.get(name)
        if n is not None:
            got = max(0.0, min(self.idle(n, now) - mark[0], per * (now - mark[1])))
            self.sums[job_id] = self.sums.get(job_id, 0.0) + got

    def take(self, job_id: str, per: int, now: float) -> float:
        """The job starts: the idle GPU-seconds of every node it held, while it held it (at
        most ``per`` GPUs a node); forgets the job."""
        for name, mark in self.marks.pop(job_id, {}).items():
            self._close(job_id, mark, name, per, now)
        return self.sums.pop(job_id, 0.0)

    def forget(self, job_id: str) -> None:
        """The job left the queue without starting."""
        self.marks.pop(job_id, None)
        self.sums.pop(job_id, None)
