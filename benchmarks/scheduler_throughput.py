"""Scheduling throughput of the gpuqueue policy and of strict FIFO at a given backlog, side by side.

    python benchmarks/scheduler_throughput.py --pending 10000 --users 1000 --gpus 1024 [--runs 3]

Fills a pool of ``gpus / 8`` nodes x 8 GPUs, queues ``--pending`` jobs (1-8 GPUs, mixed
priorities, some with time limits) from ``--users`` users, then repeatedly finishes a few
running jobs, submits as many new ones and runs one pass (``tick``), as the service does. The
same seeded stream goes to each policy; the policies alternate run by run (the machine may be
shared: compare them within a run). For each it prints decisions per second (starts,
preemptions, timeouts issued / seconds spent in ``submit``, ``finished`` and ``tick`` together)
and the latency of one step (those calls for one pass) at that backlog (the queue is topped up
so it stays at ``--pending``); then the fair-share/FIFO ratio of each run. Times are wall clock;
``cpu_decisions_per_s`` divides by the thread's CPU time instead, which other processes on a
shared machine do not inflate. ``--explain`` also times explain() of every queued job.
``--breakdown`` also prints where a step of the gpuqueue policy goes: microseconds per step
spent in each part, exclusive of the parts it calls (``submit``, ``finished``, timers, starved
jobs, the user scan, fit_keys, considering a job, placing it, reserving, starting it, the
preemption check; what ``tick`` does besides them is ``tick``). The timers around each call
slow the run down (its decisions per second are not comparable); the shares are what count.
``--digest`` adds to each run a hash of every decision in order (``digest``): two versions of
the policy make the same schedule on this stream when their digests agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from gpuqueue.queue.config import PolicyConfig, PoolConfig, QueueConfig, UserLimits  # noqa: E402
from gpuqueue.scheduler import make_scheduler  # noqa: E402
from gpuqueue.scheduler.base import JobRequest, Start  # noqa: E402
from gpuqueue.queue.states import Outcome, Priority  # noqa: E402


# the parts of a gpuqueue step --breakdown times: (module, class, method)
PARTS = [
    ("gpuqueue.scheduler.fairshare.policy", "FairShareScheduler", m)
    for m in ("submit", "finished", "tick", "_timers", "start", "try_preempt")
] + [
    ("gpuqueue.scheduler.fairshare.scheduling_pass", "SchedulingPass", m)
    for m in ("serve_starved", "scan_users", "fit_keys", "consider", "place", "reserve")
]


class Breakdown:
    """Exclusive wall time per part while ``on``: each timed call's time less that of the timed
    calls inside it. ``install`` wraps the methods of ``PARTS``; ``remove`` restores them."""

    def __init__(self) -> None:
        self.on = False
        self.spent: dict[str, float] = {}
        self._stack: list[float] = []
        self._saved: list[tuple[type, str, Any]] = []

    def _wrap(self, name: str, f: Any) -> Any:
        def timed(*a: Any, **k: Any) -> Any:
            if not self.on:
                return f(*a, **k)
            stack = self._stack
            stack.append(0.0)
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                el = time.perf_counter() - t
                inner = stack.pop()
                self.spent[name] = self.spent.get(name, 0.0) + el - inner
                if stack:
                    stack[-1] += el
        return timed

    def install(self) -> None:
        """Wrap every part's method."""
        import importlib
        for mod, cls_name, meth in PARTS:
            cls = getattr(importlib.import_module(mod), cls_name)
            f = cls.__dict__[meth]
            self._saved.append((cls, meth, f))
            setattr(cls, meth, self._wrap(meth.strip("_"), f))

    def remove(self) -> None:
        """Put the methods back."""
        for cls, meth, f in reversed(self._saved):
            setattr(cls, meth, f)
        self._saved.clear()


def run(policy: str, pending: int, users: int, gpus: int, passes: int, seed: int, explain: bool,
        breakdown: Optional[Breakdown] = None, digest: bool = False) -> dict[str, Any]:
    """One run of one policy; returns its figures (with ``breakdown``, timing its parts; with
    ``digest``, a hash of every decision in order, under ``digest``)."""
    rng = random.Random(seed)
    nodes = {f"n{i:04d}": 8 for i in range(gpus // 8)}
    cfg = QueueConfig(
        pools={"prod": PoolConfig(nodes=nodes, max_queued=10**9)},
        defaults=UserLimits(max_queued=10**9),
        policy=PolicyConfig(),
    )
    s = make_scheduler(cfg, policy)
    now = 0.0
    seq = 0

    def new_job() -> JobRequest:
        nonlocal seq
        seq += 1
        g = rng.choices([1, 2, 4, 8], [0.55, 0.2, 0.15, 0.1])[0]
        return JobRequest(
            id=f"j{seq}", user=f"u{rng.randrange(users)}", pool="prod", gpus=g,
            priority=rng.choice(list(Priority)), submit_time=now,
            time_limit=rng.choice([None, 3600.0, 7200.0]), preemptible=rng.random() < 0.3,
        )

    t0 = time.perf_counter()
    running: list[str] = []
    for _ in range(pending + gpus):
        s.submit(new_job(), now)
    fill = s.tick(now)
    running += [d.job_id for d in fill if isinstance(d, Start)]
    h = hashlib.sha256(repr(fill).encode()) if digest else None
    setup_s = time.perf_counter() - t0
    steps: list[float] = []
    cpu = 0.0
    decisions = 0
    for _ in range(passes):
        now += 1.0
        batch = []
        for _ in range(rng.randint(1, 4)):  # a few jobs end, a few arrive
            jid = running.pop(rng.randrange(len(running))) if running else None
            batch.append((jid, new_job()))
        if breakdown is not None:
            breakdown.on = True
        t, c = time.perf_counter(), time.thread_time()
        for jid, job in batch:
            if jid is not None:
                s.finished(jid, Outcome.SUCCEEDED, now)
            s.submit(job, now)
        out = s.tick(now)
        steps.append(time.perf_counter() - t)
        if breakdown is not None:
            breakdown.on = False
        cpu += time.thread_time() - c
        decisions += len(out)
        if h is not None:
            h.update(repr(out).encode())
        running += [d.job_id for d in out if isinstance(d, Start)]
    steps.sort()
    total = sum(steps)
    queued = s.snapshot()["pools"]["prod"]["queued"]
    result: dict[str, Any] = {
        "policy": policy, "pending": queued, "users": users, "gpus": gpus,
        "passes": len(steps), "decisions": decisions,
        "decisions_per_s": round(decisions / total, 1) if total else None,
        "cpu_decisions_per_s": round(decisions / cpu, 1) if cpu else None,
        "p50_step_ms": round(steps[len(steps) // 2] * 1000, 3),
        "p99_step_ms": round(steps[int(len(steps) * 0.99) - 1] * 1000, 3),
        "max_step_ms": round(steps[-1] * 1000, 3),
        "setup_s": round(setup_s, 2), "initial_starts": len(fill),
    }
    if h is not None:
        result["digest"] = h.hexdigest()[:16]
    if explain:
        t = time.perf_counter()  # what `gpuqueue ls` / the sidebar ask for every queued job
        result["explained"] = sum(s.explain(f"j{i}", now) is not None for i in range(1, seq + 1))
        result["explain_all_ms"] = round((time.perf_counter() - t) * 1000, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=1024)
    ap.add_argument("--passes", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1, help="runs of each policy, alternating")
    ap.add_argument("--policy", choices=["gpuqueue", "fifo", "both"], default="both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--explain", action="store_true", help="also time explain() of every queued job")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the parts of a gpuqueue step (an extra, slower run)")
    ap.add_argument("--digest", action="store_true",
                    help="also print a hash of every decision of each run (to compare schedules)")
    a = ap.parse_args()
    policies = ["gpuqueue", "fifo"] if a.policy == "both" else [a.policy]
    for i in range(a.runs):
        res = {p: run(p, a.pending, a.users, a.gpus, a.passes, a.seed, a.explain, digest=a.digest) for p in policies}
        for r in res.values():
            print(json.dumps({"run": i + 1, **r}))
        if len(res) == 2:
            g, f = res["gpuqueue"], res["fifo"]
            print(json.dumps({"run": i + 1, "ratio_decisions_per_s": round(g["decisions_per_s"] / f["decisions_per_s"], 3),
                              "ratio_cpu_decisions_per_s": round(g["cpu_decisions_per_s"] / f["cpu_decisions_per_s"], 3)}))
    if a.breakdown:
        b = Breakdown()
        b.install()
        try:
            r = run("gpuqueue", a.pending, a.users, a.gpus, a.passes, a.seed, False, b)
        finally:
            b.remove()
        total = sum(b.spent.values())
        parts = sorted(b.spent.items(), key=lambda kv: -kv[1])
        print(json.dumps({"breakdown_us_per_step": {k: round(v * 1e6 / r["passes"], 1) for k, v in parts},
                          "breakdown_share": {k: round(v / total, 3) for k, v in parts}}))


if __name__ == "__main__":
    main()
