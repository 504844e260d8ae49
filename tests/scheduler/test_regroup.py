"""A user whose job arrives with another group (a JupyterHub user moved to another hub group)
moves to it: usage already charged stays with the old group, the user's own usage goes with the
user, its pending jobs are ordered by the new group's share, and group quotas count it there."""

from __future__ import annotations

from typing import Any

import pytest

from gpuqueue.queue.states import Outcome
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.base import Reject, Start

from schedtools import Shell, config, job


def starts(decisions: list) -> list[str]:
    return [d.job_id for d in decisions if isinstance(d, Start)]


def scheduler(gpus: int, **groups: dict[str, Any]) -> FairShareScheduler:
    cfg = config({"p": {"n1": gpus}}, half_life="3000d")  # no decay to speak of
    return FairShareScheduler(cfg.model_validate({**cfg.model_dump(), "groups": groups}))


def group_usage(s: FairShareScheduler, name: str, now: float) -> float:
    return s.ledger.groups[name].scaled / s.ledger.scale(now)


def test_usage_stays_with_the_group_and_the_users_own_goes_with_it():
    s = scheduler(1, a={}, b={})
    sh = Shell(s)
    s.submit(job("u0", user="u", group="a"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("u0", Outcome.SUCCEEDED, 3600)  # one GPU-hour, charged to u and to a
    assert s.submit(job("u1", user="u", group="b", t=3600), 3600) is None
    assert s.ledger.users["u"].group is s.ledger.groups["b"]
    assert s.ledger.users["u"] not in s.ledger.groups["a"].members
    assert group_usage(s, "a", 3600) == pytest.approx(1.0)
    assert group_usage(s, "b", 3600) == 0.0
    assert s.usage("u", 3600) == pytest.approx(1.0)


def test_a_moved_users_pending_jobs_go_by_the_new_groups_share():
    s = scheduler(1, a={}, b={})
    sh = Shell(s)
    s.submit(job("u0", user="u", group="a"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("u0", Outcome.SUCCEEDED, 3600)  # group a: one GPU-hour
    s.submit(job("blk", user="k", t=3600), 3600)  # holds the only GPU
    sh.apply(s.tick(3600), 3600)
    s.submit(job("u1", user="u", group="a", t=3601), 3601)
    s.submit(job("x1", user="x", group="a", t=3602), 3602)  # in a, x (no usage) goes before u
    sh.apply(s.tick(3602), 3602)
    # u moves to b (no usage): its pending u1 now goes by b's share, before a's x1
    s.submit(job("u2", user="u", group="b", t=3603), 3603)
    sh.apply(s.tick(3603), 3603)
    assert s.explain("u1", 3603).position < s.explain("x1", 3603).position
    sh.finish("blk", Outcome.SUCCEEDED, 3610)  # (long before either job starves)
    assert starts(s.tick(3610)) == ["u1"]


def test_group_quotas_count_the_user_in_its_new_group():
    s = scheduler(4, a={}, b={"max_gpus": 1, "max_queued": 3})
    sh = Shell(s)
    s.submit(job("u0", user="u", group="a"), 0)
    sh.apply(s.tick(0), 0)  # u holds one GPU, in a
    s.submit(job("u1", user="u", group="b", t=1), 1)  # u moves to b: b holds u's GPU
    s.submit(job("w1", user="w", group="b", t=1), 1)
    a, b = s.ledger.groups["a"], s.ledger.groups["b"]
    assert (a.gpus, a.running, b.gpus, b.running) == (0, 0, 1, 1)  # what u holds counts in b
    assert starts(s.tick(1)) == []  # b is at its max_gpus
    assert s.explain("w1", 1).reason == "quota_group_gpus"
    # v has two jobs queued in a; moving to b brings them: 2 + 2 is over b's max_queued
    s.submit(job("v1", user="v", group="a", t=2), 2)
    s.submit(job("v2", user="v", group="a", t=2), 2)
    r = s.submit(job("v3", user="v", group="b", t=3), 3)
    assert isinstance(r, Reject) and r.reason == ("group 'b' has 4 queued jobs, its limit is 3; "
                                                  "wait for some to start or cancel some")
    assert s.ledger.users["v"].group is s.ledger.groups["a"]  # a refused job moves no one
    sh.finish("u0", Outcome.SUCCEEDED, 10)  # u's GPU comes back to b, a is untouched
    assert (s.ledger.groups["a"].gpus, s.ledger.groups["b"].gpus) == (0, 0)
    assert sorted(starts(s.tick(10))) == ["v1", "v2", "w1"]  # b's one GPU: w (no usage) first
    assert s.explain("u1", 10).reason == "quota_group_gpus"


def test_a_running_jobs_unused_charge_ahead_moves_with_the_user():
    # u0 was charged an hour ahead in a; u moves to b after 10 minutes and u0 ends after 20:
    # a keeps the 10 minutes used while u was in it, b gets the 10 minutes used since
    s = scheduler(2, a={}, b={})
    sh = Shell(s)
    s.submit(job("u0", user="u", group="a"), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("u1", user="u", group="b", t=600), 600)
    s.cancel("u1", 600)
    sh.finish("u0", Outcome.SUCCEEDED, 1200)
    assert group_usage(s, "a", 1200) == pytest.approx(1 / 6, rel=1e-4)
    assert group_usage(s, "b", 1200) == pytest.approx(1 / 6, rel=1e-4)
    assert s.usage("u", 1200) == pytest.approx(1 / 3, rel=1e-4)


@pytest.mark.parametrize("order", [("old", "new"), ("new", "old")])
def test_at_a_rebuild_the_newest_jobs_group_wins_whatever_the_order(order):
    s = scheduler(1, a={}, b={})
    jobs = {"old": job("old", user="u", group="a", t=5), "new": job("new", user="u", group="b", t=10)}
    for name in order:
        s.submit(jobs[name], 20, restoring=True)
    assert s.ledger.users["u"].group is s.ledger.groups["b"]


def test_saved_state_keeps_the_users_group_and_the_groups_usage():
    s = scheduler(1, a={}, b={})
    sh = Shell(s)
    s.submit(job("u0", user="u", group="a"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("u0", Outcome.SUCCEEDED, 3600)
    s.submit(job("u1", user="u", group="b", t=3600), 3600)
    s.cancel("u1", 3600)
    t = FairShareScheduler(s.config)
    t.import_state(s.export_state())
    assert t.ledger.users["u"].group is t.ledger.groups["b"]  # b came from the job, not the config
    assert group_usage(t, "a", 3600) == pytest.approx(1.0)  # a's usage, though no one is in it
    assert group_usage(t, "b", 3600) == 0.0
    assert t.usage("u", 3600) == pytest.approx(1.0)
