"""What a simulation reports: waits by job size, Jain's index, percentiles, and the plot."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, Mapping

from .tallies import UserAcct

if TYPE_CHECKING:
    from .engine import Simulation


SIZES = (("1", 0, 1), ("2", 2, 2), ("4", 3, 4), ("8", 5, 8), ("16+", 9, 10**9))
"""Job sizes the waits are reported by: (label, fewest GPUs, most GPUs)."""


def counted(acct: UserAcct, min_backlog_s: float) -> bool:
    """Whether an account counts in the fairness figures: entitled to something and backlogged
    at least ``min_backlog_s`` seconds."""
    return acct.entitled > 0 and acct.backlog_s >= min_backlog_s


def jain(accts: Iterable[UserAcct], min_backlog_s: float) -> tuple[float, int]:
    """Jain's index over ``received / entitled`` of the accounts that are :func:`counted`, and
    how many there are."""
    xs = [a.received / a.entitled for a in accts if counted(a, min_backlog_s)]
    jain = (sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))) if xs and any(xs) else 1.0
    return jain, len(xs)


def fairness_by(accts: Mapping[str, UserAcct], min_backlog_s: float,
                ran: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Each :func:`counted` account's figures, the least served first: ``received / entitled``
    (Jain's index is over these), both in GPU-hours, the hours it was backlogged, and the
    GPU-hours its jobs ran in all (``ran``: GPU-seconds by account, backlogged or not)."""
    rows = {name: {"received_share": a.received / a.entitled, "received_gpu_hours": a.received / 3600,
                   "entitled_gpu_hours": a.entitled / 3600, "backlogged_hours": a.backlog_s / 3600,
                   "ran_gpu_hours": ran.get(name, 0.0) / 3600}
            for name, a in accts.items() if counted(a, min_backlog_s)}
    return dict(sorted(rows.items(), key=lambda kv: (kv[1]["received_share"], kv[0])))


def avg(xs: list[float]) -> float:
    """The mean (0 for none)."""
    return sum(xs) / len(xs) if xs else 0.0


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return 0.0
    k = max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))
    return xs[k]


def plot(sim: Simulation, path: str) -> None:
    """Queue length and utilization over time, and the wait CDF by priority."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = sim.series
    step = max(1, len(s) // 5000)
    s = s[::step]
    total = sum(sum(pc.nodes.values()) for pc in sim.config.pools.values())
    t = [(x[0] - s[0][0]) / 3600 for x in s] if s else []
    fig, ax = plt.subplots(3, 1, figsize=(9, 10))
    ax[0].plot(t, [x[1] for x in s], lw=0.8)
    ax[0].set_ylabel("queued jobs")
    ax[1].plot(t, [x[2] / total for x in s], lw=0.8)
    ax[1].set_ylabel("GPU utilization")
    ax[1].set_xlabel("hours")
    for p in ("high", "medium", "low"):
        w = sorted(max(0.0, j.end - j.submit - j.run_s) / 3600 for j in sim.jobs if j.end is not None and j.priority.value == p)
        if w:
            ax[2].plot(w, [(i + 1) / len(w) for i in range(len(w))], label=p)
    ax[2].set_xscale("symlog", linthresh=0.01)
    ax[2].set_xlabel("wait (hours)")
    ax[2].set_ylabel("CDF")
    ax[2].legend()
    fig.suptitle(f"policy {sim.policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
