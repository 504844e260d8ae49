"""The product's default queue file, deploy/pools.toml (docs/config.md calls it the default):
its dev and prod pools behave as the docs say."""

from __future__ import annotations

from pathlib import Path

from gpuqueue.queue.config import load_config
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.base import Preempt, Reject, Start, TimeOut

from schedtools import Shell, job

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "pools.toml"


def scheduler() -> FairShareScheduler:
    cfg = load_config(EXAMPLE)
    cfg.policy.min_runtime = 0
    return FairShareScheduler(cfg)


def test_dev_takes_small_preemptible_jobs_of_an_hour_at_most():
    s = scheduler()
    assert list(s.config.pools)[0] == "dev"  # the default pool
    too_big = s.submit(job("big", pool="dev", gpus=3), 0)
    assert isinstance(too_big, Reject) and "ask for at most 2" in too_big.reason
    too_long = s.submit(job("long", pool="dev", time_limit=2 * 3600), 0)
    assert isinstance(too_long, Reject) and "maximum of 1h" in too_long.reason
    sh = Shell(s)
    for i in range(2):
        s.submit(job(f"low{i}", user=f"u{i}", pool="dev", gpus=2, pr="low"), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("high", user="u9", pool="dev", gpus=2, pr="high", t=1), 1)
    out = s.tick(1)
    assert [d.job_id for d in out if isinstance(d, Preempt)] == ["low0"]  # dev work is preemptible
    assert TimeOut("low1") in s.tick(3600)  # an hour at most


def test_prod_takes_whole_nodes_for_two_days_and_never_preempts():
    s = scheduler()
    assert isinstance(s.submit(job("l", pool="prod", gpus=8, time_limit=72 * 3600), 0), Reject)
    sh = Shell(s)
    for i in range(4):
        s.submit(job(f"p{i}", user=f"u{i}", pool="prod", gpus=8, pr="low"), 0)
    sh.apply(s.tick(0), 0)
    assert len(sh.running) == 4
    s.submit(job("urgent", user="u9", pool="prod", gpus=8, pr="high", t=1), 1)
    assert not [d for d in s.tick(600) if isinstance(d, (Preempt, Start))]  # not preemptible
    assert sorted(d.job_id for d in s.tick(48 * 3600) if isinstance(d, TimeOut)) == ["p0", "p1", "p2", "p3"]
