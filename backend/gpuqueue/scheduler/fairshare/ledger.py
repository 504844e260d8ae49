"""The usage ledger: each user's decayed GPU-hours, the share key fair share orders by, and what
the user holds now (for quotas and preemption by share).

Decay without touching every user: usage is stored *scaled*, ``scaled = usage * 2**((t - t0) /
half_life)``, so a charge made at ``t`` adds ``gpu_hours * scale(t)`` and the usage at ``now``
is ``scaled / scale(now)``. Ratios between users, and so the order, need no update as time
passes; ``t0`` is moved forward (``renormalize``) before ``2**e`` could overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass(eq=False)
class User:
    """One user: decayed usage (scaled), share weight, and what it holds and has queued."""

    name: str
    weight: float
    scaled: float = 0.0  # usage * 2**((t - t0) / half_life), summed over charges
    version: int = 0  # bumps when the share key changes (entries in the user heaps go stale)
    gpus: int = 0  # GPUs held, all pools
    running: int = 0  # jobs holding GPUs, all pools
    pool_gpus: dict[str, int] = field(default_factory=dict)
    pool_jobs: dict[str, int] = field(default_factory=dict)  # pending + running, by pool

    @property
    def share_key(self) -> float:
        """Scaled usage / weight: lower goes first."""
        return self.scaled / self.weight


class UsageLedger:
    """Users by name, with the decay clock their usage is scaled by."""

    def __init__(self, half_life: float, weight_of: Callable[[str], float],
                 on_renormalize: Callable[[float], None]):
        self.half_life = half_life
        self.weight_of = weight_of
        self.on_renormalize = on_renormalize  # gets the factor scaled usage was divided by
        self.t0 = 0.0
        self.users: dict[str, User] = {}

    def user(self, name: str) -> User:
        """The user's record, created on first use."""
        u = self.users.get(name)
        if u is None:
            u = self.users[name] = User(name, self.weight_of(name))
        return u

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
        """If due, move ``t0`` to ``now`` and divide every user's scaled usage by the factor;
        ``on_renormalize(factor)`` then fixes what else holds scaled units (per-job charges,
        the queue's user heaps)."""
        if not self.needs_renormalize(now):
            return
        f = 2.0 ** min((now - self.t0) / self.half_life, 1000.0)  # capped: no overflow
        self.t0 = now
        for u in self.users.values():
            u.scaled /= f
            u.version += 1
        self.on_renormalize(f)

    def add(self, u: User, scaled: float) -> bool:
        """Charge (or refund, when negative) ``scaled`` units; False if nothing changed."""
        if scaled == 0:
            return False
        u.scaled = max(0.0, u.scaled + scaled)
        u.version += 1
        return True

    def usage(self, name: str, now: float) -> float:
        """The user's decayed GPU-hours as of ``now`` (charges ahead included)."""
        u = self.users.get(name)
        return 0.0 if u is None else u.scaled / self.scale(now)

    def set_usage(self, name: str, gpu_hours: float, at: float) -> User:
        """Set a user's usage as of ``at`` (restoring saved state)."""
        u = self.user(name)
        u.scaled = float(gpu_hours) * self.scale(at)
        u.version += 1
        return u

    def with_usage(self) -> Iterable[User]:
        """Users with some usage, by name."""
        return (u for _, u in sorted(self.users.items()) if u.scaled > 0)

