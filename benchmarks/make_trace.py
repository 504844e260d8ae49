"""Write a synthetic job trace (CSV in the simulator's format), deterministic per seed.

    python benchmarks/make_trace.py OUT.csv [--shape zipf|whole-node|bursty] [--jobs N]
        [--gpus G] [--load L] [--days D] [--seed S]

Shapes (every one sized so the offered load, GPU-seconds asked / GPU-seconds available over the
trace, is ``--load``):

* ``zipf`` (the first synthetic trace): Poisson arrivals, log-normal durations (median 20 min,
  capped at 2 days), sizes mostly 1 GPU with some 2, 4, 8 and 16 (two whole nodes), 50
  Zipf-skewed users, priorities 20/50/30 % high/medium/low (low ones preemptible), 30 % of jobs
  give a time limit of twice their duration rounded up to the hour.
* ``whole-node`` (issue 13's held-out shape): 11 users over ``--days`` (14): 3 heavy ones submit
  8- and 16-GPU whole-node jobs (hours long, about 55 % of the GPU time), 8 light ones a steady
  stream of 1-GPU jobs; load 1.0. Under share order the stream of small jobs keeps every node
  partly busy, so a whole node never comes free for the heavy users' jobs.
* ``bursty`` (multi-tenant): 4 tenants of 3-8 users each; a user submits in bursts (sweeps of
  5 or more jobs within half an hour, Pareto-sized, at most half the cluster's GPUs, of one
  priority and mostly one size), then nothing; sizes 1-16 GPUs.
  Also writes ``OUT.toml`` beside the trace: the tenants as ``[groups.NAME]`` tables (one with
  weight 2) for ``--config``.

Durations are drawn first and then scaled so the load comes out right for ``--days`` (when
given) or arrivals are spread to match it (``zipf``).
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

HEADER = "job_id,user,submit_time,duration,gpus,priority,pool,preemptible,time_limit\n"
MAX_DURATION = 2 * 86400.0


def _limit(rng: random.Random, d: float, share: float) -> str:
    """A time limit for ``share`` of the jobs: twice the duration rounded up to the hour."""
    return str(math.ceil(2 * d / 3600) * 3600) if rng.random() < share else ""


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return min(MAX_DURATION, max(30.0, math.exp(rng.gauss(math.log(median), sigma))))


def zipf_trace(rng: random.Random, jobs: int, users: int, gpus: int, load: float) -> list[tuple]:
    """(submit, user, duration, gpus, priority, preemptible, limit) rows of the ``zipf`` shape."""
    sizes = [(1, 0.6), (2, 0.15), (4, 0.12), (8, 0.1), (16, 0.03)]
    zipf = [1.0 / (i + 1) ** 1.1 for i in range(users)]
    rows = []
    for _ in range(jobs):
        g = rng.choices([s for s, _ in sizes], [w for _, w in sizes])[0]
        d = _lognormal(rng, 1200, 1.6)
        pr = rng.choices(["high", "medium", "low"], [0.2, 0.5, 0.3])[0]
        rows.append((g, d, pr, rng.choices(range(users), zipf)[0]))
    mean_work = sum(g * d for g, d, _, _ in rows) / jobs
    rate = load * gpus / mean_work  # jobs per second
    t = 0.0
    out = []
    for g, d, pr, u in rows:
        t += rng.expovariate(rate)
        out.append((t, f"user{u:03d}", d, g, pr, pr == "low", _limit(rng, d, 0.3)))
    return out


def _scale_to_load(rows: list[list], gpus: int, load: float, span: float) -> None:
    """Scale durations (index 2) in place so that sum(gpus * duration) = load * gpus * span."""
    work = sum(r[3] * r[2] for r in rows)
    f = load * gpus * span / work
    for r in rows:
        r[2] = min(MAX_DURATION, max(30.0, r[2] * f))


def whole_node_trace(rng: random.Random, jobs: int, gpus: int, load: float, days: float) -> list[tuple]:
    """Rows of the ``whole-node`` shape (see the module docstring)."""
    span = days * 86400.0
    heavy = [f"heavy{i}" for i in range(3)]
    light = [f"light{i}" for i in range(8)]
    n_heavy = int(jobs * 0.06)
    rows: list[list] = []
    for _ in range(n_heavy):
        g = rng.choices([8, 16], [0.7, 0.3])[0]
        d = _lognormal(rng, 4 * 3600, 1.0)
        pr = rng.choices(["high", "medium", "low"], [0.1, 0.8, 0.1])[0]
        rows.append([rng.uniform(0, span), rng.choice(heavy), d, g, pr, False])
    for _ in range(jobs - n_heavy):
        d = _lognormal(rng, 1800, 1.3)
        pr = rng.choices(["high", "medium", "low"], [0.2, 0.5, 0.3])[0]
        u = light[min(len(light) - 1, int(rng.expovariate(0.35)))]
        rows.append([rng.uniform(0, span), u, d, 1, pr, pr == "low"])
    # heavy users' share of the GPU time: about 55 %, whatever the draws
    hw = sum(r[3] * r[2] for r in rows if r[3] > 1)
    lw = sum(r[3] * r[2] for r in rows if r[3] == 1)
    for r in rows:
        if r[3] > 1:
            r[2] *= 0.55 * (hw + lw) / hw
        else:
            r[2] *= 0.45 * (hw + lw) / lw
    _scale_to_load(rows, gpus, load, span)
    rows.sort(key=lambda r: r[0])
    return [(t, u, d, g, pr, pre, _limit(rng, d, 0.4)) for t, u, d, g, pr, pre in rows]


TENANTS = {"vision": 8, "nlp": 6, "speech": 4, "robotics": 3}


def bursty_trace(rng: random.Random, jobs: int, gpus: int, load: float, days: float) -> list[tuple]:
    """Rows of the ``bursty`` shape (see the module docstring)."""
    span = days * 86400.0
    rows: list[list] = []
    per_tenant = {t: jobs * n // sum(TENANTS.values()) for t, n in TENANTS.items()}
    for tenant, n_users in TENANTS.items():
        users = [f"{tenant}-{i}" for i in range(n_users)]
        left = per_tenant[tenant]
        while left > 0:
            start = rng.uniform(0, span)
            user = rng.choice(users)
            g0 = rng.choices([1, 2, 4, 8, 16], [0.45, 0.2, 0.15, 0.15, 0.05])[0]
            # a sweep asks for at most half the cluster's GPUs at once
            size = min(left, max(1, gpus // 2 // g0), max(5, int(rng.paretovariate(1.2) * 20)))
            pr = rng.choices(["high", "medium", "low"], [0.15, 0.6, 0.25])[0]
            median = _lognormal(rng, 1800, 1.0)
            for _ in range(size):
                g = g0 if rng.random() < 0.8 else rng.choice([1, 2, 4, 8])
                d = _lognormal(rng, median, 0.8)
                rows.append([start + rng.uniform(0, 1800), user, d, g, pr, pr == "low"])
            left -= size
    _scale_to_load(rows, gpus, load, span)
    rows.sort(key=lambda r: r[0])
    return [(t, u, d, g, pr, pre, _limit(rng, d, 0.4)) for t, u, d, g, pr, pre in rows]


def tenants_config(path: Path) -> None:
    """The tenants of the ``bursty`` shape as ``[groups.NAME]`` tables (with a ``prod`` pool:
    the simulator's ``--cluster`` gives it its nodes)."""
    lines = ['[pools.prod]', 'nodes = { "prod-0000" = 8 }  # replaced by gpuqueue simulate --cluster', '']
    for i, (tenant, n) in enumerate(TENANTS.items()):
        members = ", ".join(f'"{tenant}-{k}"' for k in range(n))
        lines += [f"[groups.{tenant}]", f"members = [{members}]"]
        if i == 0:
            lines.append("weight = 2")
        lines.append("")
    path.write_text("\n".join(lines))


def write(path: str, rows: list[tuple], prefix: str) -> None:
    """The rows as CSV."""
    with open(path, "w") as f:
        f.write(HEADER)
        for i, (t, u, d, g, pr, pre, tl) in enumerate(rows):
            f.write(f"{prefix}-{i:06d},{u},{t:.1f},{d:.1f},{g},{pr},prod,{'true' if pre else 'false'},{tl}\n")


def make_trace(path: str, shape: str = "zipf", jobs: int = 25000, users: int = 50, gpus: int = 512,
               load: float = 1.2, seed: int = 1, days: float = 14.0) -> None:
    """Write a trace of ``shape`` to ``path`` (and ``path``.toml for ``bursty``)."""
    rng = random.Random(seed)
    if shape == "zipf":
        write(path, zipf_trace(rng, jobs, users, gpus, load), "syn")
    elif shape == "whole-node":
        write(path, whole_node_trace(rng, jobs, gpus, load, days), "wn")
    elif shape == "bursty":
        write(path, bursty_trace(rng, jobs, gpus, load, days), "bu")
        tenants_config(Path(path).with_suffix(".toml"))
    else:
        raise SystemExit(f"unknown shape {shape!r}: zipf, whole-node or bursty")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shape", default="zipf", choices=["zipf", "whole-node", "bursty"])
    ap.add_argument("--jobs", type=int, default=None, help="default 25,000 (zipf), 24,000 (others)")
    ap.add_argument("--users", type=int, default=50, help="zipf only")
    ap.add_argument("--gpus", type=int, default=512, help="cluster GPUs the load is sized for")
    ap.add_argument("--load", type=float, default=None, help="default 1.2 (zipf), 1.0 (others)")
    ap.add_argument("--days", type=float, default=14.0, help="span of the whole-node and bursty shapes")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    jobs = a.jobs or (25000 if a.shape == "zipf" else 24000)
    load = a.load if a.load is not None else (1.2 if a.shape == "zipf" else 1.0)
    make_trace(a.out, a.shape, jobs, a.users, a.gpus, load, a.seed, a.days)


if __name__ == "__main__":
    main()
