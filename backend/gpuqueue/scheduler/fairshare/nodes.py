"""The node index: which nodes of a pool are up, their free GPUs by count (for best fit in a few
steps), the jobs on each node and when they are expected to end (for reservations).

End estimates are a running job's ``ends_at``: the end of its time limit (``min(job limit, pool
max_runtime)`` or the pool's ``default_timeout``), or the stop deadline of a job asked to stop;
INF when unknown. They are cached per node and dropped whenever the node's jobs or free GPUs
change (``touch``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from typing import TYPE_CHECKING, Callable, Container, Iterable, Optional

from ..base import Placement
from ..cluster import NodeState
from .records import INF, Job

if TYPE_CHECKING:  # pragma: no cover
    from .reservations import Reservation

FitEntry = tuple[float, int, str, int]
"""(fit time, -free GPUs, node, node version): an entry of a pool's lazy fit-time heap."""


class PoolNodes:
    """The up nodes of one pool: by name, and by free GPU count."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[NodeState] = []  # up nodes, by name
        self.by_name: dict[str, NodeState] = {}
        self.total = 0  # GPUs of the up nodes
        self.free = 0  # free GPUs of the up nodes
        self.max_gpus = 0  # GPUs of the biggest up node
        # free GPU count -> names of the nodes with that many free (sorted): best fit in a few steps
        self.by_free: dict[int, list[str]] = {}
        # per GPU need: a lazy heap of when each node has that many free, and the count of node
        # touches it was last brought up to date with (-1: never; see NodeIndex.soonest_node)
        self.fit_heaps: dict[int, list] = {}

    def reset(self, nodes: list[NodeState]) -> None:
        """Index these up nodes (sorted by name)."""
        self.nodes = nodes
        self.by_name = {n.name: n for n in nodes}
        self.total = sum(n.gpus for n in nodes)
        self.free = sum(len(n.free) for n in nodes)
        self.max_gpus = max((n.gpus for n in nodes), default=0)
        self.by_free = {}
        self.fit_heaps = {}
        for n in nodes:  # by name: the lists come out sorted
            self.by_free.setdefault(len(n.free), []).append(n.name)

    def best_fit(self, gpus: int, claimed: dict[str, "Reservation"], end: float,
                 borrow: bool = False, apart: Optional[Callable[[NodeState], bool]] = None,
                 ) -> tuple[Optional[Placement], bool]:
        """One node with ``gpus`` free: the fewest free GPUs that still fit, ties by name;
        first among the nodes for which ``apart`` is false (those running no work of the other
        kind: preemptible jobs kept apart from the rest, so that preemption can make a node
        whole), then among all. A node a reservation holds only if this job, ending at
        ``end``, ends before that reservation's start, fits in its spare GPUs (which it then
        uses up), or (``borrow``) the reservation is a starved job's. Returns the placement and
        whether it borrows."""
        by_free, by_name = self.by_free, self.by_name
        # the nodes ``apart`` keeps out of the first round, in the order met: the second round
        # ("then among all") would meet the other nodes again in the same order and turn them
        # down again (whether a reservation lets the job in does not change in between), so
        # only these are looked at again
        kept_apart: list[str] = []
        for f in range(gpus, self.max_gpus + 1):
            names = by_free.get(f)
            if not names:
                continue
            for name in names:
                if apart is not None and apart(by_name[name]):
                    kept_apart.append(name)
                    continue
                # (a node no reservation holds, the common case, without the call)
                borrowed = self._enter(name, gpus, claimed, end, borrow) if claimed and name in claimed else False
                if borrowed is not None:
                    return {name: tuple(sorted(by_name[name].free)[:gpus])}, borrowed
        for name in kept_apart:
            borrowed = self._enter(name, gpus, claimed, end, borrow)
            if borrowed is not None:
                return {name: tuple(sorted(by_name[name].free)[:gpus])}, borrowed
        return None, False

    @staticmethod
    def _enter(name: str, gpus: int, claimed: dict[str, "Reservation"], end: float, borrow: bool) -> Optional[bool]:
        """Whether a job of ``gpus`` ending at ``end`` may take the node ``name`` as far as
        reservations go (``best_fit``): None if not, else whether it borrows the GPUs of a
        starved job's reservation. Fitting in a reservation's spare GPUs uses them up."""
        r = claimed.get(name) if claimed else None
        if r is None or (r.shadow < INF and end <= r.shadow):
            return False
        spare = r.spare.get(name, 0)
        if gpus <= spare:
            r.spare[name] = spare - gpus
            return False
        if borrow and r.starved:
            return True
        return None

    def idle_nodes(self, gpus: int, nodes: int, claimed: dict[str, "Reservation"], end: float,
                   borrow: bool = False) -> tuple[Optional[Placement], bool]:
        """``nodes`` whole idle nodes with at least ``gpus / nodes`` GPUs, by (GPUs, name); a
        reserved node only if the job ends before that reservation, the node is all spare, or
        (``borrow``) it is set aside for a starved job. Returns the placement and whether it
        borrows."""
        per = gpus // nodes
        idle: list[NodeState] = []
        borrowed = False
        for f in range(max(per, 0), self.max_gpus + 1):
            for name in self.by_free.get(f, ()):
                n = self.by_name[name]
                if n.gpus != f:
                    continue
                r = claimed.get(name) if claimed else None
                if r is not None and not (r.shadow < INF and end <= r.shadow) and r.spare.get(name, 0) < n.gpus:
                    if not (borrow and r.starved):
                        continue
                    borrowed = True
                idle.append(n)
                if len(idle) == nodes:
                    return {n.name: tuple(sorted(n.free)[:per]) for n in idle}, borrowed
        return None, False

    def max_free(self) -> int:
        """The most free GPUs on one node."""
        return max((f for f, names in self.by_free.items() if names), default=0)

    def idle_count(self, per: int) -> int:
        """Nodes with at least ``per`` GPUs free."""
        return sum(len(v) for f, v in self.by_free.items() if f >= per)


class NodeIndex:
    """Every pool's ``PoolNodes``, the jobs on each node, and their end estimates."""

    def __init__(self, jobs: dict[str, Job]) -> None:
        self.jobs = jobs
        self.pools: dict[str, PoolNodes] = {}
        self.jobs_on: dict[str, set[str]] = {}  # node -> ids of the jobs holding GPUs there
        self.stopping_gpus: dict[str, int] = {}  # node -> GPUs of its jobs asked to stop
        # node -> GPUs of its running preemptible jobs, by priority rank (high, medium, low)
        self.preemptible_gpus: dict[str, list[int]] = {}
        self._indexed_free: dict[str, int] = {}  # node -> free count as filed in by_free
        self._pool_of: dict[str, PoolNodes] = {}  # up node -> its pool's index
        self._ends: dict[str, list[tuple[float, int]]] = {}  # node -> sorted (end, GPUs) of its jobs
        self._fit_times: dict[str, dict[int, float]] = {}  # node -> need -> fit time (see fit_time)
        self.versions: dict[str, int] = {}  # node -> bumps on every touch (fit heaps go stale)
        self.touches = 0  # counts every touch of any node
        self.touched_at: dict[str, int] = {}  # node -> ``touches`` at its last touch

    def rebuild(self, nodes: Iterable[NodeState]) -> None:
        """Index the up nodes of every pool again (after a node joined or left)."""
        by_pool: dict[str, list[NodeState]] = {name: [] for name in self.pools}
        for n in sorted(nodes, key=lambda n: n.name):
            by_pool.setdefault(n.pool, [])
            if n.up:
                by_pool[n.pool].append(n)
            self.jobs_on.setdefault(n.name, set())
        self._indexed_free = {}
        self._pool_of = {}
        self._ends = {}
        self._fit_times = {}
        for name, up in by_pool.items():
            pn = self.pools.get(name)
            if pn is None:
                pn = self.pools[name] = PoolNodes(name)
            pn.reset(up)
            for n in up:
                self._indexed_free[n.name] = len(n.free)
                self._pool_of[n.name] = pn

    def touch(self, names: Iterable[str], ends_kept: bool = False) -> None:
        """These nodes' jobs or free GPUs changed: re-file them by free count, drop their cached
        end times (unless ``ends_kept``: the caller updated them) and fit times, and mark them
        for the fit-time heaps."""
        ends, fit_times, indexed, versions, at = (
            self._ends, self._fit_times, self._indexed_free, self.versions, self.touched_at)
        for name in names:
            if not ends_kept:
                ends.pop(name, None)
            fit_times.pop(name, None)
            old = indexed.get(name)
            if old is None:
                continue  # down or unknown: not indexed
            pool = self._pool_of[name]
            versions[name] = versions.get(name, 0) + 1
            self.touches += 1
            at.pop(name, None)  # kept in touch order: touched_since walks back from the end
            at[name] = self.touches
            new = len(pool.by_name[name].free)
            if new == old:
                continue
            lst = pool.by_free[old]
            del lst[bisect_left(lst, name)]
            insort(pool.by_free.setdefault(new, []), name)
            indexed[name] = new

    def add_job(self, job: Job, placement: Placement) -> None:
        """The job now holds GPUs on these nodes (its ``ends_at`` set): file it there, with its
        end estimate in the nodes' cached ends, and touch them."""
        jid, jobs_on, ends = job.request.id, self.jobs_on, self._ends
        for name, ids in placement.items():
            on = jobs_on.get(name)
            if on is None:
                on = jobs_on[name] = set()
            on.add(jid)
            lst = ends.get(name)
            if lst is not None:
                insort(lst, (job.ends_at, len(ids)))
        self.touch(placement, ends_kept=True)

    def remove_job(self, job: Job, placement: Placement) -> None:
        """The job gave back its GPUs on these nodes (free counts already updated): take it out
        of them, and out of their cached ends, and touch them."""
        jid, jobs_on, ends = job.request.id, self.jobs_on, self._ends
        for name, ids in placement.items():
            on = jobs_on.get(name)
            if on is not None:
                on.discard(jid)
            lst = ends.get(name)
            if lst is not None:
                e = (job.ends_at, len(ids))
                i = bisect_left(lst, e)
                if i < len(lst) and lst[i] == e:
                    del lst[i]
                else:  # not as cached: rebuilt when next asked for
                    del ends[name]
        self.touch(placement, ends_kept=True)

    def touched_since(self, touches: int, names: Container[str]) -> set[str]:
        """Those of ``names`` touched after the first ``touches`` touches (``touched_at`` is
        in touch order, so this visits only the nodes touched since)."""
        out: set[str] = set()
        for name, at in reversed(self.touched_at.items()):
            if at <= touches:
                break
            if name in names:
                out.add(name)
        return out

    def version(self, name: str) -> int:
        """Bumps whenever the node's jobs or free GPUs change."""
        return self.versions.get(name, 0)

    def node(self, name: str) -> NodeState:
        """An up node by name."""
        return self._pool_of[name].by_name[name]

    # ------------------------------------------------------------------ end estimates
    def node_ends(self, name: str) -> list[tuple[float, int]]:
        """Sorted (end estimate, job GPUs) of the jobs on a node (cached until touched)."""
        ends = self._ends.get(name)
        if ends is None:
            jobs = self.jobs
            ends = [(j.ends_at, len(j.placement[name]))  # type: ignore[index]
                    for j in (jobs[jid] for jid in self.jobs_on.get(name, ()))]
            ends.sort()
            self._ends[name] = ends
        return ends

    def fit_time(self, n: NodeState, need: int) -> float:
        """-INF if ``need`` GPUs are free on the node now; else the known end time after which
        they are (before clamping to now); INF if known ends never free enough."""
        f = len(n.free)
        if f >= need:
            return -INF
        t = INF
        for end, g in self.node_ends(n.name):
            if f >= need:
                break
            f += g
            t = end
        return t if f >= need else INF

    def cached_fit_time(self, n: NodeState, need: int) -> float:
        """``fit_time``, cached per node and need until the node is touched."""
        per_node = self._fit_times.get(n.name)
        if per_node is None:
            per_node = self._fit_times[n.name] = {}
        t = per_node.get(need)
        if t is None:
            t = per_node[need] = self.fit_time(n, need)
        return t

    def soonest_node(self, pool: PoolNodes, need: int, now: float,
                     exclude: Container[str] = ()) -> list[tuple[float, int, str, int]]:
        """The node (not in ``exclude``) where ``need`` GPUs are free soonest by known ends, as
        [(fit time, -free, name, GPUs)] (empty if none has enough GPUs): min by (max(now, fit
        time), -free, name), from a per-need heap brought up to date with the nodes touched
        since its last use."""
        entry = pool.fit_heaps.get(need)
        if entry is None:
            entry = pool.fit_heaps[need] = [[], -1]
        heap, synced = entry
        version, by_name = self.versions, pool.by_name
        dirty = by_name if synced < 0 else self.touched_since(synced, by_name)
        entry[1] = self.touches
        for name in dirty:
            n = by_name[name]
            if n.gpus >= need:
                heapq.heappush(heap, (self.fit_time(n, need), -len(n.free), name, version.get(name, 0)))
        due: list[FitEntry] = []  # fit times already reached tie at `now`
        skipped: list[FitEntry] = []
        while heap:
            raw, negfree, name, ver = heap[0]
            if ver != version.get(name, 0) or name not in by_name:
                heapq.heappop(heap)
                continue
            if name in exclude:
                skipped.append(heapq.heappop(heap))
                continue
            if raw > now or due and raw == INF:
                break
            due.append(heapq.heappop(heap))
        if due:
            best = min((max(now, e[0]) if e[0] < INF else INF, e[1], e[2]) for e in due)
        elif heap:
            best = heap[0][:3]
        else:
            best = None
        for e in due:
            heapq.heappush(heap, e)
        for e in skipped:
            heapq.heappush(heap, e)
        if best is None:
            return []
        return [(best[0] if best[0] == INF else max(now, best[0]), best[1], best[2], by_name[best[2]].gpus)]
