"""What the simulator tallies as it replays: per user (or group) accounts, the GPUs free per
node and whether a queued job would fit on them, and the max-min fair shares the accounts are
measured against (docs/scheduling.md, "Metrics of the simulator")."""

from __future__ import annotations

from dataclasses import dataclass
from operator import truediv
from typing import Mapping, Optional

from ..queue.config import QueueConfig


@dataclass(slots=True)
class UserAcct:
    """Fairness tallies of a user (or of a group: the sum over its members)."""

    pending: int = 0  # queued jobs
    used: int = 0  # GPUs held
    received: float = 0.0  # GPU-seconds held while backlogged
    entitled: float = 0.0  # GPU-seconds of max-min fair share while backlogged
    backlog_s: float = 0.0
    weight: float = 1.0


class FitTracker:
    """Per pool: free GPUs per node and the pending job shapes, to tell whether some queued
    job would fit on the GPUs free right now (one node with enough free GPUs, or enough idle
    nodes for a multi-node job)."""

    def __init__(self, config: QueueConfig):
        self.pool_of: dict[str, str] = {}
        self.free: dict[str, int] = {}
        self.by_free: dict[str, list[int]] = {}  # pool -> [number of nodes with f free GPUs]
        self.pending: dict[str, dict[tuple[int, int], int]] = {}
        self.changed = True  # free GPUs or pending shapes changed since ``fits`` was last asked
        for pool, pc in config.pools.items():
            self.by_free[pool] = [0] * (max(pc.nodes.values()) + 1)
            self.pending[pool] = {}
            for node, g in pc.nodes.items():
                self.pool_of[node], self.free[node] = pool, g
                self.by_free[pool][g] += 1

    def take(self, placement: dict[str, tuple[int, ...]], sign: int) -> None:
        """Allocate (sign -1) or release (+1) the GPUs of a placement."""
        self.changed = True
        for node, ids in placement.items():
            bf = self.by_free[self.pool_of[node]]
            bf[self.free[node]] -= 1
            self.free[node] += sign * len(ids)
            bf[self.free[node]] += 1

    def queue(self, pool: str, shape: tuple[int, int], delta: int) -> None:
        """A job of this (GPUs, nodes) shape joined (+1) or left (-1) the pool's queue."""
        self.changed = True
        d = self.pending[pool]
        d[shape] = d.get(shape, 0) + delta
        if not d[shape]:
            del d[shape]

    def fits(self, pool: str) -> bool:
        """Would some queued job of the pool fit on its free GPUs now?"""
        bf = self.by_free[pool]
        best = len(bf) - 1
        while best > 0 and not bf[best]:
            best -= 1
        for g, nodes in self.pending[pool]:
            if nodes <= 1 and g <= best:
                return True
            if nodes > 1 and bf[-1] >= nodes:
                return True
        return False


def hierarchical_fill(capacity: float, demand: dict[str, float], weight: dict[str, float],
                      group_of: dict[str, str], group_weight: dict[str, float],
                      memo: Optional[dict[str, tuple[float, dict[str, float], dict[str, float]]]] = None,
                      ) -> dict[str, float]:
    """Weighted max-min fair shares in two levels: ``capacity`` among the groups (by group
    weight, each group's demand the sum of its members'), then each group's share among its
    members (by user weight). ``group_of`` maps every user to its group. ``memo`` (kept by the
    caller across calls, weights unchanged) holds each group's last split: a group whose share
    and members' demands are as then gets the same split without filling again."""
    gdemand: dict[str, float] = {}
    by_group: dict[str, dict[str, float]] = {}  # each group's members' demands, in demand's order
    for u, d in demand.items():
        g = group_of[u]
        members = by_group.get(g)
        if members is None:
            by_group[g] = {u: d}
            gdemand[g] = 0.0 + d
        else:
            members[u] = d
            gdemand[g] += d
    gshare = water_fill(capacity, gdemand, group_weight)
    out: dict[str, float] = {}
    for g, share in gshare.items():
        members = by_group[g]
        if memo is None:
            out.update(water_fill(share, members, weight))
            continue
        last = memo.get(g)
        # the split depends on the members' order too (their weights are summed in it)
        if last is None or last[0] != share or last[1] != members or list(last[1]) != list(members):
            last = memo[g] = (share, members, water_fill(share, members, weight))
        out.update(last[2])
    return out


def water_fill(capacity: float, demand: Mapping[str, float], weight: Mapping[str, float]) -> dict[str, float]:
    """Weighted max-min fair shares of ``capacity``: every user gets ``w_u * L`` GPUs, or its
    whole demand if that is less, with the level ``L`` set so the shares add up to the capacity
    (or every demand is met)."""
    out: dict[str, float] = {}
    ws = list(map(weight.__getitem__, demand))  # (the loops that build the lists run in C)
    left, wsum = float(capacity), sum(ws)
    # by demand per weight, then name (names are unique: the demand never decides a tie, nor
    # does the weight carried along)
    for _, u, d, w in sorted(zip(map(truediv, demand.values(), ws), demand, demand.values(), ws)):
        level = left / wsum if wsum > 0 else 0.0
        share = w * level
        if not share < d:  # min(d, share), without the call: the same value and type
            share = d
        out[u] = share
        left -= share
        wsum -= w
    return out


class GroupFill:
    """``hierarchical_fill`` of one pool, kept up to date demand change by demand change
    instead of rebuilt from the whole demand at every call (the simulator asks after nearly
    every submission and finish): each group's members' demands, in the order of the pool's
    demand dict, their total, and each group's last split, reused while the group's share and
    members are as then.

    ``shares()`` equals ``hierarchical_fill`` exactly (to the last bit, as floats) where the
    group weights are whole numbers: the groups are then filled in an order other than that
    of the demand dict, and only the sum of their weights depends on that order, which is
    exact for whole numbers. The caller checks that (``whole_weight``) and falls back to
    ``hierarchical_fill`` otherwise."""

    def __init__(self, capacity: float, weight: dict[str, float], group_of: dict[str, str],
                 group_weight: dict[str, float]):
        self.capacity = capacity
        self.weight, self.group_of, self.group_weight = weight, group_of, group_weight
        self.members: dict[str, dict[str, float]] = {}  # group -> {user: demand}, in demand's order
        self.total: dict[str, float] = {}  # group -> its members' demands summed
        self.version: dict[str, int] = {}  # group -> count of changes to its members' demands
        self.splits: dict[str, tuple[float, int, dict[str, float]]] = {}  # group -> (share, version, split)

    def set(self, user: str, demand: float) -> None:
        """The user's demand is now ``demand`` (0: gone). Call it whenever the pool's demand
        dict changes, as it changes (updated in place, added last, deleted at 0), so that
        each group's members keep that dict's order: a member's weight is summed in it."""
        g = self.group_of[user]
        members = self.members.get(g)
        if members is None:
            members = self.members[g] = {}
        old = members.get(user, 0)
        if demand:
            members[user] = demand
            self.total[g] = self.total.get(g, 0) + demand - old
        else:
            del members[user]
            self.total[g] -= old
            if not members:
                del self.members[g], self.total[g]
        self.version[g] = self.version.get(g, 0) + 1

    def shares(self) -> dict[str, float]:
        """Every user's share, as floats (``0.0 + x``, as the caller sums them): a new dict."""
        # float(total) is 0.0 + d1 + d2 + ... of hierarchical_fill: sums of whole numbers, exact
        gdemand = {g: float(t) for g, t in self.total.items()}
        out: dict[str, float] = {}
        for g, share in water_fill(self.capacity, gdemand, self.group_weight).items():
            version = self.version[g]
            last = self.splits.get(g)
            if last is None or last[0] != share or last[1] != version:
                split = water_fill(share, self.members[g], self.weight)
                last = self.splits[g] = (share, version, {u: 0.0 + x for u, x in split.items()})
            out.update(last[2])
        return out


def whole_weight(w: float) -> bool:
    """Is ``w`` a whole number small enough that sums of such weights are exact in any order?"""
    return float(w).is_integer() and abs(w) <= 2**32
