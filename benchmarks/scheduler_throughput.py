"""Scheduling throughput of the gpuqueue policy at a given backlog.

    python benchmarks/scheduler_throughput.py --pending 10000 --users 1000 --gpus 1024

Fills a pool of ``gpus / 8`` nodes x 8 GPUs, queues ``--pending`` jobs (1-8 GPUs, mixed
priorities, some with time limits) from ``--users`` users, then repeatedly finishes a few
running jobs and runs one pass (``tick``), as the service does. Prints JSON: decisions per
second (starts, preemptions, timeouts issued / time spent in passes) and pass latency
percentiles at that backlog (the queue is topped up so it stays at ``--pending``). Times are
wall clock; ``cpu_decisions_per_s`` divides by the thread's CPU time in passes instead, which
other processes on a shared machine do not inflate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from gpuqueue.config import PolicyConfig, PoolConfig, QueueConfig, UserLimits  # noqa: E402
from gpuqueue.scheduler import make_scheduler  # noqa: E402
from gpuqueue.scheduler.base import JobRequest, Start  # noqa: E402
from gpuqueue.states import Outcome, Priority  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--passes", type=int, default=2000)
    ap.add_argument("--policy", default="gpuqueue")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--explain", action="store_true", help="also time explain() of every queued job")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    nodes = {f"n{i:04d}": 8 for i in range(a.gpus // 8)}
    cfg = QueueConfig(
        pools={"prod": PoolConfig(nodes=nodes, max_queued=10**9)},
        defaults=UserLimits(max_queued=10**9),
        policy=PolicyConfig(),
    )
    s = make_scheduler(cfg, a.policy)
    now = 0.0
    seq = 0

    def new_job() -> JobRequest:
        nonlocal seq
        seq += 1
        g = rng.choices([1, 2, 4, 8], [0.55, 0.2, 0.15, 0.1])[0]
        return JobRequest(
            id=f"j{seq}", user=f"u{rng.randrange(a.users)}", pool="prod", gpus=g,
            priority=rng.choice(list(Priority)), submit_time=now,
            time_limit=rng.choice([None, 3600.0, 7200.0]), preemptible=rng.random() < 0.3,
        )

    t0 = time.perf_counter()
    running: list[str] = []
    for _ in range(a.pending + a.gpus):
        s.submit(new_job(), now)
    fill = s.tick(now)
    running += [d.job_id for d in fill if isinstance(d, Start)]
    setup_s = time.perf_counter() - t0
    passes: list[float] = []
    cpu = 0.0
    decisions = 0
    for _ in range(a.passes):
        now += 1.0
        for _ in range(rng.randint(1, 4)):  # a few jobs end, a few arrive
            if running:
                jid = running.pop(rng.randrange(len(running)))
                s.finished(jid, Outcome.SUCCEEDED, now)
            s.submit(new_job(), now)
        t, c = time.perf_counter(), time.thread_time()
        out = s.tick(now)
        passes.append(time.perf_counter() - t)
        cpu += time.thread_time() - c
        decisions += len(out)
        running += [d.job_id for d in out if isinstance(d, Start)]
    passes.sort()
    total = sum(passes)
    pending = s.snapshot()["pools"]["prod"]["queued"]
    t = time.perf_counter()  # what `gpuqueue ls` / the sidebar ask for every queued job
    explained = sum(s.explain(f"j{i}", now) is not None for i in range(1, seq + 1)) if a.explain else 0
    explain_s = time.perf_counter() - t
    print(json.dumps({
        "policy": a.policy, "pending": pending, "users": a.users, "gpus": a.gpus,
        "passes": len(passes), "decisions": decisions,
        "decisions_per_s": round(decisions / total, 1) if total else None,
        "cpu_decisions_per_s": round(decisions / cpu, 1) if cpu else None,
        "p50_pass_ms": round(passes[len(passes) // 2] * 1000, 3),
        "p99_pass_ms": round(passes[int(len(passes) * 0.99) - 1] * 1000, 3),
        "max_pass_ms": round(passes[-1] * 1000, 3),
        "setup_s": round(setup_s, 2), "initial_starts": len(fill),
        **({"explained": explained, "explain_all_ms": round(explain_s * 1000, 1)} if a.explain else {}),
    }))


if __name__ == "__main__":
    main()
