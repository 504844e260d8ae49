"""Write a synthetic job trace (CSV in the simulator's format), deterministic per seed.

    python benchmarks/make_trace.py OUT.csv --jobs 25000 --users 50 --gpus 512 --load 1.2 --seed 1

Arrivals are Poisson, sized so the offered load (GPU-seconds asked / GPU-seconds available)
is ``--load``; durations are log-normal (heavy tailed, median 20 min, capped at 2 days); sizes are mostly 1 GPU
with some 2, 4, 8 and 16 (two whole nodes); users are Zipf-skewed (a few heavy users);
priorities 20% high, 50% medium, 30% low (low ones preemptible); 30% of jobs give a time
limit of twice their duration rounded up to the hour.
"""

from __future__ import annotations

import argparse
import math
import random


def make_trace(path: str, jobs: int, users: int, gpus: int, load: float, seed: int) -> None:
    """Write the trace to ``path``."""
    rng = random.Random(seed)
    sizes = [(1, 0.6), (2, 0.15), (4, 0.12), (8, 0.1), (16, 0.03)]
    zipf = [1.0 / (i + 1) ** 1.1 for i in range(users)]
    rows = []
    for i in range(jobs):
        g = rng.choices([s for s, _ in sizes], [w for _, w in sizes])[0]
        d = min(2 * 86400.0, max(30.0, math.exp(rng.gauss(math.log(1200), 1.6))))
        pr = rng.choices(["high", "medium", "low"], [0.2, 0.5, 0.3])[0]
        rows.append((g, d, pr, rng.choices(range(users), zipf)[0]))
    mean_work = sum(g * d for g, d, _, _ in rows) / jobs
    rate = load * gpus / mean_work  # jobs per second
    t = 0.0
    with open(path, "w") as f:
        f.write("job_id,user,submit_time,duration,gpus,priority,pool,preemptible,time_limit\n")
        for i, (g, d, pr, u) in enumerate(rows):
            t += rng.expovariate(rate)
            tl = "" if rng.random() > 0.3 else str(math.ceil(2 * d / 3600) * 3600)
            pre = "true" if pr == "low" else "false"
            f.write(f"syn-{i:06d},user{u:03d},{t:.1f},{d:.1f},{g},{pr},prod,{pre},{tl}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, default=25000)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--gpus", type=int, default=512, help="cluster GPUs the load is sized for")
    ap.add_argument("--load", type=float, default=1.2)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    make_trace(a.out, a.jobs, a.users, a.gpus, a.load, a.seed)


if __name__ == "__main__":
    main()
