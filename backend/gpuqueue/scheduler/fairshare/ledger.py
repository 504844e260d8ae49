"""The usage ledger: each user's (and group's) decayed GPU-hours, the share key fair share
orders by, and what they hold now (for quotas and preemption by share).

Decay without touching every user: usage is stored *scaled*, ``scaled = usage * 2**((t - t0) /
half_life)``, so a charge made at ``t`` adds ``gpu_hours * scale(t)`` and the usage at ``now``
is ``scaled / scale(now)``. Ratios between users, and so the order, need no update as time
passes; ``t0`` is moved forward (``renormalize``) before ``2**e`` could overflow.

Hierarchical fair share: when the config has ``[groups.NAME]`` tables, every user belongs to a
group (a user in none is a group of its own, weighted as the user) and the share key is
``(group usage / group weight, user usage / user weight)``: groups first, then users within.
Without groups the key is the user's ratio alone.

A user may change groups (a JupyterHub user moved to another hub group: its next job arrives
with the new one, see ``move``). Usage already charged stays with the group that consumed it,
as Slurm's per-account usage does; the user's own decayed usage goes with the user, and from
then on its charges, the GPUs and jobs it holds, and its share key are the new group's. A
group's usage is so the sum of what was charged while each user was in it, not of its current
members' usage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

ShareKey = Union[float, tuple[float, float]]


@dataclass(eq=False, slots=True)
class Group:
    """A group of users: usage summed over its members, and what they hold together."""

    name: str
    weight: float
    configured: bool  # a [groups.NAME] table (its limits apply), not a lone user
    scaled: float = 0.0
    gpus: int = 0
    running: int = 0
    members: list["User"] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class User:
    """One user: decayed usage (scaled), share weight, and what it holds and has queued."""

    name: str
    weight: float
    limits: Any = None  # the user's UserLimits (config.limits_for)
    group: Optional[Group] = None  # set when fair share is hierarchical
    group_since: float = -math.inf  # submit time of the newest job that placed it in its group
    scaled: float = 0.0  # usage * 2**((t - t0) / half_life), summed over charges
    version: int = 0  # bumps when the share key changes (entries in the user heaps go stale)
    gpus: int = 0  # GPUs held, all pools
    running: int = 0  # jobs holding GPUs, all pools
    pool_gpus: dict[str, int] = field(default_factory=dict)
    pool_jobs: dict[str, int] = field(default_factory=dict)  # pending + running, by pool

    @property
    def share_key(self) -> ShareKey:
        """Lower goes first: the user's scaled usage / weight, after its group's."""
        g = self.group
        if g is None:
            return self.scaled / self.weight
        return (g.scaled / g.weight, self.scaled / self.weight)


class UsageLedger:
    """Users (and groups) by name, with the decay clock their usage is scaled by."""

    def __init__(self, half_life: float, limits_of: Callable[[str], Any],
                 on_renormalize: Callable[[float], None],
                 groups: Optional[dict[str, tuple[float, bool]]] = None):
        self.half_life = half_life
        self.limits_of = limits_of
        self.on_renormalize = on_renormalize  # gets the factor scaled usage was divided by
        self.t0 = 0.0
        self.users: dict[str, User] = {}
        # hierarchical when groups are configured: name -> (weight, configured)
        self.hierarchical = bool(groups)
        self._group_specs = dict(groups or {})
        self.groups: dict[str, Group] = {}

    def user(self, name: str, group: Optional[str] = None) -> User:
        """The user's record, created on first use (in ``group`` when fair share is
        hierarchical; a user in no group is a group of its own)."""
        u = self.users.get(name)
        if u is None:
            limits = self.limits_of(name)
            u = self.users[name] = User(name, limits.weight, limits)
            if self.hierarchical:
                u.group = self._group(group, u)
                u.group.members.append(u)
        return u

    def group_key(self, name: Optional[str], user: str) -> str:
        """The ledger's name of ``user``'s group when the config says ``name``: a configured
        group's name, else (none, or a group no longer configured) ``user:NAME``, the user's own."""
        return name if name is not None and name in self._group_specs else f"user:{user}"

    def _group(self, name: Optional[str], u: User) -> Group:
        key = self.group_key(name, u.name)
        g = self.groups.get(key)
        if g is None:
            weight, configured = self._group_specs.get(key, (u.weight, False))
            g = self.groups[key] = Group(key, weight, configured)
        return g

    def move(self, u: User, name: Optional[str]) -> Optional[Group]:
        """Move the user into group ``name`` (hierarchical fair share only); returns the group
        it left, or None when it stays where it is. Usage charged so far stays with the old
        group; the user's own usage, and the GPUs and jobs it holds (for group quotas), go
        with it. The caller re-keys the queues (the user's share key changed)."""
        old = u.group
        if old is None or old.name == self.group_key(name, u.name):
            return None
        new = self._group(name, u)
        old.members.remove(u)
        old.gpus -= u.gpus
        old.running -= u.running
        new.members.append(u)
        new.gpus += u.gpus
        new.running += u.running
        u.group = new
        u.version += 1
        return old

    def scale(self, t: float) -> float:
        """``2**((t - t0) / half_life)``; rebases first if that would near overflow."""
        e = (t - self.t0) / self.half_life
        if e > 60:  # e.g. the first call with wall-clock time: rebase before 2**e overflows
            self.renormalize(t)
            e = (t - self.t0) / self.half_life
        return 2.0 ** e

    def needs_renormalize(self, now: float) -> bool:
        """Whether ``scale(now)`` has grown past 2**60."""
        return (now - self.t0) / self.half_life >= 60

    def renormalize(self, now: float) -> None:
        """If due, move ``t0`` to ``now`` and divide every scaled usage by the factor;
        ``on_renormalize(factor)`` then fixes what else holds scaled units (per-job charges,
        the queue's user heaps)."""
        if not self.needs_renormalize(now):
            return
        f = 2.0 ** min((now - self.t0) / self.half_life, 1000.0)  # capped: no overflow
        self.t0 = now
        for u in self.users.values():
            u.scaled /= f
            u.version += 1
        for g in self.groups.values():
            g.scaled /= f
        self.on_renormalize(f)

    def add(self, u: User, scaled: float) -> list[User]:
        """Charge (or refund, when negative) ``scaled`` units; returns the users whose share
        key changed (the user, or every member of its group)."""
        if scaled == 0:
            return []
        before = u.scaled
        u.scaled = max(0.0, u.scaled + scaled)
        u.version += 1
        g = u.group
        if g is None:
            return [u]
        g.scaled = max(0.0, g.scaled + (u.scaled - before))
        for m in g.members:
            if m is not u:
                m.version += 1
        return g.members

    def usage(self, name: str, now: float) -> float:
        """The user's decayed GPU-hours as of ``now`` (charges ahead included)."""
        u = self.users.get(name)
        if u is None:
            return 0.0
        scale = self.scale(now)  # first: it may rebase u.scaled
        return u.scaled / scale

    def group_usage(self, u: User, now: float) -> float:
        """The decayed GPU-hours of the user's group (the user's own without groups)."""
        scale = self.scale(now)  # first: it may rebase the scaled usage
        return (u.group.scaled if u.group is not None else u.scaled) / scale

    def set_usage(self, name: str, gpu_hours: float, at: float, group: Optional[str] = None) -> User:
        """Set a user's usage as of ``at`` (restoring saved state)."""
        u = self.user(name, group)
        new = float(gpu_hours) * self.scale(at)
        if u.group is not None:
            u.group.scaled = max(0.0, u.group.scaled + new - u.scaled)
            for m in u.group.members:
                m.version += 1
        u.scaled = new
        u.version += 1
        return u

    def set_group_usage(self, name: str, gpu_hours: float, at: float) -> None:
        """Set a configured group's usage as of ``at`` (restoring saved state: what its users
        were charged while in it, which may differ from its members' usage)."""
        if name not in self._group_specs:
            return
        g = self.groups.get(name)
        if g is None:
            weight, configured = self._group_specs[name]
            g = self.groups[name] = Group(name, weight, configured)
        g.scaled = float(gpu_hours) * self.scale(at)
        for m in g.members:
            m.version += 1

    def with_usage(self) -> Iterable[User]:
        """Users with some usage, by name."""
        return (u for _, u in sorted(self.users.items()) if u.scaled > 0)
