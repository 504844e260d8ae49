"""Unit tests of each rule of the gpuqueue policy."""

from __future__ import annotations

import pytest

from gpuqueue.queue.config import UserLimits, load_config
from gpuqueue.scheduler import FairShareScheduler, make_scheduler
from gpuqueue.scheduler.base import Preempt, Reject, Retry, Start, TimeOut, Warn
from gpuqueue.queue.states import Outcome

from schedtools import Shell, config, job


def starts(decisions) -> list[str]:
    return [d.job_id for d in decisions if isinstance(d, Start)]


def test_make_scheduler_returns_the_policy():
    cfg = config({"p": {"n1": 4}})
    assert isinstance(make_scheduler(cfg, "gpuqueue"), FairShareScheduler)
    with pytest.raises(ValueError):
        make_scheduler(cfg, "nope")


def test_fifo_is_refused_over_a_config_with_quotas_it_would_ignore(tmp_path, capsys):
    from gpuqueue.cluster.daemon import cli_main

    cfg = config({"p": {"n1": 8}})
    cfg = cfg.model_validate({**cfg.model_dump(), "users": {"alice": {"max_gpus": 2}},
                              "groups": {"team": {"members": ["bob"], "max_running": 1}}})
    with pytest.raises(ValueError) as e:
        make_scheduler(cfg, "fifo")
    assert str(e.value) == ("policy 'fifo' does not enforce [users.alice] max_gpus, [groups.team] max_running: "
                            "use policy 'gpuqueue' (the default), or remove these limits from the config")
    assert make_scheduler(cfg, "fifo", baseline=True) is not None  # the simulator's comparison
    assert make_scheduler(config({"p": {"n1": 8}}), "fifo") is not None  # nothing to ignore
    f = tmp_path / "q.toml"
    f.write_text('[pools.p]\nnodes = { n1 = 8 }\nmax_gpus_per_user = 4\n')
    assert cli_main(["--config", str(f), "--policy", "fifo", "--redis", "redis://127.0.0.1:1/0"]) == 2
    assert capsys.readouterr().err == ("gpuqueue scheduler: policy 'fifo' does not enforce [pools.p] "
                                       "max_gpus_per_user: use policy 'gpuqueue' (the default), or "
                                       "remove these limits from the config\n")


def test_priority_tiers_then_fair_share():
    s = FairShareScheduler(config({"p": {"n1": 1}}))
    s.submit(job("low", pr="low"), 0)
    s.submit(job("med", pr="medium"), 0)
    s.submit(job("high", pr="high"), 0)
    assert starts(s.tick(0)) == ["high"]


def test_burst_cannot_jump_ahead_charged_at_admission():
    s = FairShareScheduler(config({"p": {"n1": 2}}))
    for i in range(5):
        s.submit(job(f"a{i}", user="alice"), 0)
    s.submit(job("b0", user="bob", t=1), 1)
    first = starts(s.tick(1))
    assert first == ["a0", "b0"]  # alice's first start charged her, so bob comes next


def test_decayed_usage_orders_users():
    s = FairShareScheduler(config({"p": {"n1": 1}}, half_life=3600))
    sh = Shell(s)
    s.submit(job("a0", user="alice"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("a0", Outcome.SUCCEEDED, 7200)  # alice used 2 GPU-hours
    assert s.usage("alice", 7200) == pytest.approx(2.0)
    assert s.usage("alice", 7200 + 3600) == pytest.approx(1.0)  # half-life
    s.submit(job("a1", user="alice", t=7200), 7200)
    s.submit(job("b1", user="bob", t=7201), 7201)
    assert starts(s.tick(7201)) == ["b1"]


def backlogged_gpu_hours(cfg, users: list[str], hours: float = 48, size: int = 1) -> dict[str, float]:
    """Every user keeps 20 one-hour jobs queued; returns the GPU-hours each got."""
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    got = {u: 0.0 for u in users}
    ends: dict[str, float] = {}
    n = 0
    now = 0.0
    while now < hours * 3600:
        for u in users:
            while sum(1 for j in s.jobs.values() if j.request.user == u and j.state == "pending") < 20:
                n += 1
                s.submit(job(f"{u}-{n}", user=u, gpus=size, t=now), now)
        for d in sh.step(ends, now, 3600):
            got[s.jobs[d.job_id].request.user] += size
        now += 600
    return got


def test_weights_divide_the_cluster():
    # users of weight 4 and 1, both always backlogged, get about 4:1 of the GPU-hours
    users = {"heavy": UserLimits(weight=4.0)}
    got = backlogged_gpu_hours(config({"p": {"n1": 8, "n2": 2}}, users=users), ["heavy", "light"])
    assert 3.6 <= got["heavy"] / got["light"] <= 4.4, got


def test_groups_share_first_then_their_users():
    # two groups of equal weight: the lone member of one gets what the three of the other share
    cfg = config({"p": {"n1": 8, "n2": 4}})
    cfg = cfg.model_validate({**cfg.model_dump(), "groups": {"a": {"members": ["a1", "a2", "a3"]},
                                                             "b": {"members": ["b1"]}}})
    got = backlogged_gpu_hours(cfg, ["a1", "a2", "a3", "b1"])
    a = got["a1"] + got["a2"] + got["a3"]
    assert 0.9 <= got["b1"] / a <= 1.1, got
    assert max(got["a1"], got["a2"], got["a3"]) <= 1.2 * min(got["a1"], got["a2"], got["a3"]), got
    # a group weight of 3 gives that group three quarters
    cfg.groups["a"].weight = 3.0
    got = backlogged_gpu_hours(cfg, ["a1", "a2", "a3", "b1"])
    assert 2.7 <= (got["a1"] + got["a2"] + got["a3"]) / got["b1"] <= 3.3, got


def test_group_limits_hold_for_the_members_together():
    cfg = config({"p": {"n1": 8}})
    cfg = cfg.model_validate({**cfg.model_dump(), "groups": {"team": {
        "members": ["x", "y"], "max_gpus": 3, "max_queued": 3}}})
    s = FairShareScheduler(cfg)
    for i, u in enumerate(["x", "y", "x"]):
        assert s.submit(job(f"j{i}", user=u, gpus=1, group="team"), 0) is None
    r = s.submit(job("j3", user="y", group="team"), 0)
    assert isinstance(r, Reject) and "group 'team'" in r.reason and "limit is 3" in r.reason
    assert isinstance(s.submit(job("big", user="y", gpus=4, group="team"), 0), Reject)
    assert len(starts(s.tick(0))) == 3
    s.submit(job("j4", user="y", group="team", t=1), 1)
    assert starts(s.tick(1)) == []
    assert s.explain("j4", 1).reason == "quota_group_gpus"


def test_a_groups_first_job_meets_its_limits_too():
    # before any member had a job the policy had no record of the group: a job over the group's
    # GPU quota was queued, and then could never start
    cfg = config({"p": {"n1": 8}})
    cfg = cfg.model_validate({**cfg.model_dump(), "groups": {"team": {"members": ["x", "y"], "max_gpus": 4}}})
    s = FairShareScheduler(cfg)
    r = s.submit(job("big", user="x", gpus=8, group="team"), 0)
    assert isinstance(r, Reject) and r.reason == "8 GPUs is over group 'team''s quota of 4 GPUs; ask for at most 4"
    assert s.submit(job("ok", user="x", gpus=4, group="team"), 0) is None
    assert starts(s.tick(0)) == ["ok"]


def test_pool_per_user_gpu_limit_refuses_and_holds():
    cfg = config({"p": {"n1": 8}})
    cfg.pools["p"].max_gpus_per_user = 2
    s = FairShareScheduler(cfg)
    r = s.submit(job("big", gpus=3), 0)
    assert isinstance(r, Reject) and "per-user limit of 2" in r.reason
    for i in range(3):
        assert s.submit(job(f"j{i}"), 0) is None
    assert starts(s.tick(0)) == ["j0", "j1"]
    e = s.explain("j2", 0)
    assert e.reason == "quota_pool_gpus" and "its per-user limit is 2" in e.message


def test_a_preemptible_pool_makes_its_jobs_victims():
    cfg = config({"p": {"n1": 2}}, preemptible=("p",), min_runtime=0)
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    s.submit(job("low", pr="low", gpus=2), 0)  # not preemptible itself: the pool is
    sh.apply(s.tick(0), 0)
    s.submit(job("high", pr="high", gpus=2, t=1), 1)
    assert [d.job_id for d in s.tick(1) if isinstance(d, Preempt)] == ["low"]


def test_pool_max_runtime_refuses_longer_limits_and_times_out_the_others():
    cfg = config({"p": {"n1": 1}}, timeout_warning=0)
    cfg.pools["p"].max_runtime = 3600
    s = FairShareScheduler(cfg)
    r = s.submit(job("long", time_limit=7200), 0)
    assert isinstance(r, Reject) and "over pool 'p''s maximum of 1h" in r.reason
    assert s.submit(job("j"), 0) is None  # no limit of its own: the pool's maximum applies
    assert starts(s.tick(0)) == ["j"]
    assert s.tick(3600) == [TimeOut("j")]


def test_quota_waits_with_reason_and_depth_rejects():
    users = {"alice": UserLimits(max_gpus=2, max_running=5, max_queued=3)}
    s = FairShareScheduler(config({"p": {"n1": 8}}, users=users))
    for i in range(3):
        assert s.submit(job(f"a{i}", user="alice"), 0) is None
    r = s.submit(job("a3", user="alice"), 0)
    assert isinstance(r, Reject) and "limit is 3" in r.reason
    assert starts(s.tick(0)) == ["a0", "a1"]
    e = s.explain("a2", 0)
    assert e.reason == "quota_gpus"
    too_big = s.submit(job("big", user="alice", gpus=4), 0)
    assert isinstance(too_big, Reject) and "quota" in too_big.reason


def test_pool_queue_depth_rejected():
    cfg = config({"p": {"n1": 1}})
    cfg.pools["p"].max_queued = 2
    s = FairShareScheduler(cfg)
    assert s.submit(job("a"), 0) is None and s.submit(job("b"), 0) is None
    r = s.submit(job("c"), 0)
    assert isinstance(r, Reject) and "queue is full" in r.reason


def test_unknown_pool_and_too_big_rejected():
    s = FairShareScheduler(config({"p": {"n1": 4}}))
    assert "unknown pool" in s.submit(job("x", pool="zz"), 0).reason
    assert "do not fit on one node" in s.submit(job("y", gpus=5), 0).reason


def test_gang_packing_best_fit_and_whole_nodes():
    s = FairShareScheduler(config({"p": {"a": 8, "b": 8, "c": 8}}))
    sh = Shell(s)
    s.submit(job("one", gpus=6), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("two", gpus=2, t=1), 1)
    sh.apply(s.tick(1), 1)
    assert list(sh.running["two"]) == list(sh.running["one"])  # packed on the same node
    s.submit(job("multi", gpus=16, nodes=2, t=2), 2)
    sh.apply(s.tick(2), 2)
    assert sorted(sh.running["multi"]) == ["b", "c"]
    assert all(len(v) == 8 for v in sh.running["multi"].values())


def test_reservation_blocks_unbounded_backfill_but_allows_bounded():
    s = FairShareScheduler(config({"p": {"n1": 4}}))
    sh = Shell(s)
    s.submit(job("r0", gpus=2, time_limit=1000), 0)
    sh.apply(s.tick(0), 0)  # 2 of 4 busy until t=1000 at most
    s.submit(job("big", gpus=4, t=1), 1)
    s.submit(job("long", gpus=1, t=2), 2)  # no limit: would delay big
    s.submit(job("short", gpus=1, t=3, time_limit=500), 3)  # ends before the shadow (1000)
    got = starts(s.tick(3))
    assert got == ["short"]
    assert s.explain("big", 3).reason == "resources"
    assert s.explain("big", 3).eta_s == pytest.approx(997)
    assert s.explain("long", 3).reason == "reservation"


def test_starvation_boost_is_capped_below_high():
    s = FairShareScheduler(config({"p": {"n1": 1}}, reservations=False))  # the boost alone
    s.submit(job("low", pr="low", t=0), 0)
    s.tick(0)  # starts
    sh = Shell(s)
    sh.running["low"] = {"n1": (0,)}
    s.submit(job("old_low", pr="low", t=0), 0)
    s.submit(job("high", pr="high", t=10000), 10000)
    s.submit(job("med", pr="medium", t=10000), 10000)
    s.tick(10000)
    terms = s.explain("old_low", 10000).priority_terms
    assert terms["tier"] == 1 and terms["starvation_boost"] == 3
    sh.finish("low", Outcome.SUCCEEDED, 10001)
    assert starts(s.tick(10001)) == ["high"]  # fresh high still first
    sh.finish("high", Outcome.SUCCEEDED, 10002)
    assert starts(s.tick(10002)) == ["old_low"]  # boosted low beats fresh medium


def test_starved_jobs_go_first_oldest_first_whatever_their_share():
    # a job of one GPU starves after oldest_first_after (600 s here)
    s = FairShareScheduler(config({"p": {"n1": 1}}, oldest_first_after=600))
    sh = Shell(s)
    s.submit(job("hog", user="heavy"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("hog", Outcome.SUCCEEDED, 3600)  # heavy used a GPU-hour
    s.submit(job("blocker", user="other", t=3600), 3600)
    sh.apply(s.tick(3600), 3600)
    s.submit(job("old", user="heavy", t=3600), 3600)
    s.submit(job("fresh", user="light", t=3700), 3700)
    sh.finish("blocker", Outcome.SUCCEEDED, 3800)
    assert starts(s.tick(3800)) == ["fresh"]  # nobody starved yet: fair share, light first
    s.submit(job("fresh2", user="light", pr="high", t=4100), 4100)
    sh.finish("fresh", Outcome.SUCCEEDED, 4300)
    # "old" has waited 700 s > 600 s: it goes first, before light's fresh high-priority job
    assert starts(s.tick(4300)) == ["old"]
    assert s.explain("fresh2", 4300).reason in ("resources", "priority", "reservation")


def test_a_starved_whole_node_job_gets_its_node_set_aside():
    # two 4-GPU nodes kept partly busy by 1-GPU jobs; light's 4-GPU job goes first by share and
    # holds the one reservation of the fair order; heavy's 4-GPU job only gets GPUs set aside
    # once it starves (600 s here), then new 1-GPU jobs without a time limit stay off its node
    s = FairShareScheduler(config({"p": {"a": 4, "b": 4}}))
    sh = Shell(s)
    s.submit(job("hog", user="heavy", gpus=8 // 2, time_limit=50), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("hog", Outcome.SUCCEEDED, 50)  # heavy has used GPU time: it goes after light
    for i in range(8):
        s.submit(job(f"s{i}", user="filler", time_limit=2000 + 100 * i, t=60), 60)
    sh.apply(s.tick(60), 60)
    s.submit(job("big", user="heavy", gpus=4, t=61), 61)
    s.submit(job("first", user="light", gpus=4, t=62), 62)
    sh.apply(s.tick(62), 62)
    assert s.explain("first", 62).reason == "resources"  # holds the fair order's reservation
    assert s.explain("big", 62).reason != "starved"
    now = 700.0  # big has waited 639 s
    sh.apply(s.tick(now), now)
    e = s.explain("big", now)
    assert e.reason == "starved" and e.eta_s is not None
    reserved = {n for j in ("s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7") for n in sh.running[j]}
    assert reserved == {"a", "b"}
    # a node frees up as its jobs end; a stream of 1-GPU jobs without a time limit arrives
    for k, jid in enumerate(["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]):
        now = 2060.0 + 100 * k
        sh.finish(jid, Outcome.SUCCEEDED, now)
        s.submit(job(f"late{k}", user="stream", t=now), now)
        sh.apply(s.tick(now), now)
    assert "first" in sh.running and "big" in sh.running  # both whole-node jobs started
    assert not any(f"late{k}" in sh.running for k in range(8))


def test_backfill_skips_sizes_that_cannot_fit_and_reaches_a_small_job_far_behind():
    # two 8-GPU nodes, 5 GPUs busy on each (no end known); many 8-GPU jobs ahead of a 1-GPU one
    s = FairShareScheduler(config({"p": {"a": 8, "b": 8}}, backfill_depth=3))
    sh = Shell(s)
    s.submit(job("r1", user="z1", gpus=5), 0)
    s.submit(job("r2", user="z2", gpus=5), 0)
    sh.apply(s.tick(0), 0)
    for i in range(20):
        s.submit(job(f"big{i}", user=f"u{i}", gpus=8, pr="high", t=1), 1)
    s.submit(job("small", user="late", gpus=1, pr="low", t=2), 2)
    got = starts(s.tick(2))
    assert got == ["small"]  # 20 blocked 8-GPU jobs are not walked one by one
    assert s.explain("big0", 2).reason == "resources"
    assert s.explain("big0", 2).position == 1
    assert s.explain("big1", 2).position == 2  # users u0, u1, u10, ... (equal shares: by name)


def test_preemption_of_lower_priority_after_min_runtime_with_grace_and_requeue():
    s = FairShareScheduler(config({"p": {"n1": 2}}, min_runtime=100, grace=30))
    sh = Shell(s)
    s.submit(job("low", pr="low", gpus=2, preemptible=True), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("high", pr="high", gpus=2, t=50), 50)
    out = s.tick(50)
    assert not [d for d in out if isinstance(d, Preempt)]  # too young
    assert s.next_wakeup() <= 100
    out = s.tick(100)
    pre = [d for d in out if isinstance(d, Preempt)]
    assert [p.job_id for p in pre] == ["low"] and pre[0].grace_s == 30
    assert s.tick(101) == []  # no second preemption while it stops
    r = sh.finish("low", Outcome.PREEMPTED, 120)
    assert r == [Retry("low", 120, counted=False)]
    assert starts(s.tick(120)) == ["high"]
    assert s.jobs["low"].request.failures == 0


def test_a_preempted_job_says_so_until_a_pass_gives_it_a_reason():
    """`gpuqueue status` of a job just preempted and queued again: not the reason it had when it
    started ("started"), but that it was preempted and waits again (and how, as a pass sees it)."""
    s = FairShareScheduler(config({"p": {"n1": 2}}, min_runtime=0, grace=30))
    sh = Shell(s)
    s.submit(job("low", pr="low", gpus=2, preemptible=True), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("high", pr="high", gpus=2, t=50), 50)
    sh.apply(s.tick(50), 50)
    sh.finish("low", Outcome.PREEMPTED, 60)
    e = s.explain("low", 60)
    assert (e.reason, e.message) == ("requeued", "preempted; queued again, 1 job is ahead of it in pool 'p'")
    sh.apply(s.tick(60), 60)
    assert "high" in sh.running
    e = s.explain("low", 61)
    assert (e.reason, e.message) == ("resources", "waiting for 2 GPUs in pool 'p' (0/2 free); GPUs are reserved for it")
    # a job lost with its node says that
    s2 = FairShareScheduler(config({"p": {"n1": 1, "n2": 1}}, min_runtime=0))
    sh2 = Shell(s2)
    s2.submit(job("a", gpus=1), 0)
    sh2.apply(s2.tick(0), 0)
    [node] = s2.jobs["a"].placement
    s2.node_down(node, 5)
    e = s2.explain("a", 5)
    assert e.reason == "requeued" and e.message.startswith("its node was lost; queued again"), e


def test_non_preemptible_never_preempted():
    s = FairShareScheduler(config({"p": {"n1": 2}}, min_runtime=0))
    sh = Shell(s)
    s.submit(job("low", pr="low", gpus=2), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("high", pr="high", gpus=2), 1)
    assert s.tick(5000) == []


def test_pool_without_preemption():
    cfg = config({"p": {"n1": 2}}, min_runtime=0)
    cfg.pools["p"].allow_preemption = False
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    s.submit(job("low", pr="low", gpus=2, preemptible=True), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("high", pr="high", gpus=2), 1)
    assert s.tick(5000) == []


def test_anti_thrash_budget_and_per_job_cap():
    s = FairShareScheduler(config({"p": {"n1": 1}}, min_runtime=0, preemption_budget=1, preemption_window=3600, max_preemptions_per_job=1))
    sh = Shell(s)
    s.submit(job("low", pr="low", preemptible=True), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("h1", pr="high"), 1)
    sh.apply(s.tick(1), 1)
    sh.finish("low", Outcome.PREEMPTED, 2)
    sh.apply(s.tick(2), 2)
    assert "h1" in sh.running
    sh.finish("h1", Outcome.SUCCEEDED, 3)
    sh.apply(s.tick(3), 3)
    assert "low" in sh.running
    s.submit(job("h2", pr="high"), 4)
    assert not [d for d in s.tick(10_000) if isinstance(d, Preempt)]  # per-job cap reached


def test_timeout_with_warning_first():
    cfg = config({"p": {"n1": 1}}, timeout_warning=60)
    cfg.pools["p"].max_runtime = 1000
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    s.submit(job("j"), 0)
    sh.apply(s.tick(0), 0)
    assert s.next_wakeup() == 940
    w = s.tick(940)
    assert len(w) == 1 and isinstance(w[0], Warn)
    assert s.tick(999) == []
    assert s.tick(1000) == [TimeOut("j")]
    assert s.tick(1001) == []
    assert s.finished("j", Outcome.TIMED_OUT, 1001) == []  # not retried
    assert "j" not in s.jobs


def test_retry_backoff_exponential_deterministic_jitter():
    s = FairShareScheduler(config({"p": {"n1": 1}}))
    sh = Shell(s)
    s.submit(job("j", max_retries=3), 0)
    ats = []
    now = 0.0
    for k in range(3):
        sh.apply(s.tick(now), now)
        (r,) = sh.finish("j", Outcome.FAILED, now + 1)
        assert r.counted and r.at > now + 1
        ats.append(r.at - (now + 1))
        assert s.explain("j", now + 1).reason == "backoff"
        now = r.at
    assert ats[0] < ats[1] < ats[2]
    base = s.config.retry_backoff
    for k, d in enumerate(ats):
        assert base * 2**k * 0.75 <= d <= base * 2**k * 1.25
    sh.apply(s.tick(now), now)
    assert sh.finish("j", Outcome.FAILED, now + 1) == []  # 3 retries used
    assert s.backoff("x", 1) == FairShareScheduler(config({"p": {"n1": 1}})).backoff("x", 1)


def test_node_loss_is_not_a_failure():
    s = FairShareScheduler(config({"p": {"a": 1, "b": 1}}))
    sh = Shell(s)
    s.submit(job("j"), 0)
    sh.apply(s.tick(0), 0)
    node = next(iter(sh.running["j"]))
    out = s.node_down(node, 5)
    sh.running.pop("j")
    assert out == [Retry("j", 5, counted=False)]
    assert s.jobs["j"].request.failures == 0
    sh.apply(s.tick(5), 5)
    assert "j" in sh.running and node not in sh.running["j"]
    s.node_up(node, "p", 1, 6)
    assert s.snapshot()["pools"]["p"]["gpus_total"] == 2


def test_explain_position_and_terms():
    s = FairShareScheduler(config({"p": {"n1": 1}}))
    for i in range(3):
        s.submit(job(f"j{i}", t=i), i)
    s.tick(3)
    e = s.explain("j2", 3)
    assert e.position == 2 and set(e.priority_terms) >= {"tier", "usage_gpu_hours", "weight", "share_key", "wait_s"}
    assert s.explain("j0", 3) is None  # running
    assert e.as_dict()["reason"] in ("resources", "priority", "reservation")


def test_export_import_state_round_trip():
    s = FairShareScheduler(config({"p": {"n1": 1}}))
    sh = Shell(s)
    s.submit(job("a", user="alice"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("a", Outcome.SUCCEEDED, 7200)
    import json

    state = json.loads(json.dumps(s.export_state()))
    t = FairShareScheduler(config({"p": {"n1": 1}}))
    t.import_state(state)
    assert t.usage("alice", 7200) == pytest.approx(s.usage("alice", 7200))
    t.submit(job("a2", user="alice", t=7200), 7200)
    t.submit(job("b", user="bob", t=7201), 7201)
    assert starts(t.tick(7201)) == ["b"]


def test_restore_running_holds_gpus():
    s = FairShareScheduler(config({"p": {"n1": 2}}))
    s.restore_running(job("r", gpus=2), {"n1": (0, 1)}, 0)
    s.submit(job("x"), 1)
    assert s.tick(1) == []
    s.finished("r", Outcome.SUCCEEDED, 2)
    assert starts(s.tick(2)) == ["x"]


def test_cancel_pending_and_running():
    s = FairShareScheduler(config({"p": {"n1": 1}}))
    s.submit(job("a"), 0)
    s.submit(job("b"), 0)
    s.tick(0)
    s.cancel("b", 1)
    s.cancel("a", 1)
    assert s.snapshot()["pools"]["p"] == {"gpus_total": 1, "gpus_used": 0, "queued": 0, "running": 0, "reserved_for": []}


@pytest.mark.parametrize("policy", ["gpuqueue", "fifo"])
@pytest.mark.parametrize("limit", [float("inf"), float("nan"), 1e308, None, 600.0])
def test_any_time_limit_is_queued_and_removed_under_the_same_key(policy, limit):
    # issue 11: time_limit inf was filed under one queue key and removed under another
    # (KeyError, then no job started any more). The edge refuses such values; the core must not break.
    s = make_scheduler(config({"p": {"n1": 1}}), policy)
    assert s.submit(job("a", time_limit=limit), 0) is None
    assert s.submit(job("b", time_limit=limit, t=1), 1) is None
    assert s.submit(job("c", time_limit=limit, t=2), 2) is None
    assert starts(s.tick(2)) == ["a"]
    assert s.explain("b", 3) is not None
    s.cancel("b", 3)  # a queued job leaves the queue
    s.finished("a", Outcome.SUCCEEDED, 4)
    assert starts(s.tick(4)) == ["c"]  # the queue still schedules
    assert s.snapshot()["pools"]["p"]["queued"] == 0


def test_saved_usage_comes_back_in_the_users_groups():
    cfg = config({"p": {"n1": 1}})
    cfg = cfg.model_validate({**cfg.model_dump(), "groups": {"g": {"members": ["a", "b"]}}})
    s = FairShareScheduler(cfg)
    sh = Shell(s)
    s.submit(job("a0", user="a"), 0)
    sh.apply(s.tick(0), 0)
    sh.finish("a0", Outcome.SUCCEEDED, 3600)
    t = FairShareScheduler(cfg)
    t.import_state(s.export_state())
    assert t.ledger.users["a"].group is t.ledger.groups["g"]
    t.submit(job("b1", user="b", t=3600), 3600)  # b shares a's group usage ...
    t.submit(job("c1", user="c", t=3601), 3601)  # ... so c, alone in no group, goes first
    assert starts(t.tick(3601)) == ["c1"]


def test_with_no_end_known_the_node_with_the_youngest_jobs_is_drained():
    # no job has a time limit, so no end is known: a starved 4-GPU job drains the node whose
    # blocking job is youngest (b: its job has run 1 h less), not the first by name (a, whose
    # job has run longest and, runtimes being heavy-tailed, is likely to run longest yet)
    s = FairShareScheduler(config({"p": {"a": 4, "b": 4}}))
    sh = Shell(s)
    s.submit(job("old", user="x", gpus=3), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("young", user="y", gpus=3, t=3600), 3600)
    sh.apply(s.tick(3600), 3600)
    assert set(sh.running["old"]) == {"a"} and set(sh.running["young"]) == {"b"}
    s.submit(job("big", user="z", gpus=4, t=3600), 3600)
    now = 4300.0  # big has waited past the pool's starvation timeout (600 s)
    sh.apply(s.tick(now), now)
    assert s.explain("big", now).reason == "starved"
    s.submit(job("small", user="w", t=now), now)
    sh.apply(s.tick(now), now)
    assert set(sh.running["small"]) == {"a"}  # b is set aside for big
    sh.finish("young", Outcome.SUCCEEDED, 5000)
    sh.apply(s.tick(5000), 5000)
    assert set(sh.running["big"]) == {"b"}


def test_a_user_with_nothing_here_preempts_over_share_work_only_within_its_own_share():
    """The under-share rule: w holds nothing in the pool and x holds all 4 GPUs (fair share 2
    each). w's job of 2 GPUs preempts x's job of the same priority; one of 3 GPUs, over w's
    share, preempts nothing (it waits its turn)."""
    for gpus, victims in ((2, ["x1"]), (3, [])):
        s = FairShareScheduler(config({"p": {"n1": 4}}, min_runtime=0))
        sh = Shell(s)
        s.submit(job("x1", user="x", gpus=4, preemptible=True), 0)
        sh.apply(s.tick(0), 0)
        s.submit(job("w1", user="w", gpus=gpus, t=10), 10)
        assert [d.job_id for d in s.tick(10) if isinstance(d, Preempt)] == victims, gpus


@pytest.mark.parametrize("timeout, tier, reason", [(600, 1, "starved"), (0, 4, "resources")])
def test_a_starvation_timeout_of_0_means_no_starvation_and_no_boosts(tmp_path, timeout, tier, reason):
    # a 2-GPU low job behind a 1-GPU job that never ends, for ten days
    p = tmp_path / "q.toml"
    p.write_text(f'[pools.p]\nnodes = {{ "n1" = 2 }}\nstarvation_timeout = {timeout}\n')
    s = FairShareScheduler(load_config(p))
    sh = Shell(s)
    s.submit(job("filler", user="a"), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("big", user="b", gpus=2, pr="low", t=1), 1)
    sh.apply(s.tick(10 * 86400), 10 * 86400)
    e = s.explain("big", 10 * 86400)
    assert e.reason == reason and e.priority_terms["tier"] == tier
    assert e.priority_terms["starved"] == (1.0 if timeout else 0.0)


def test_a_charge_ahead_of_0_charges_a_job_when_it_ends():
    s = FairShareScheduler(config({"p": {"n1": 2}}, charge_ahead=0, half_life="3000d"))
    sh = Shell(s)
    s.submit(job("run", user="a", gpus=2), 0)
    sh.apply(s.tick(0), 0)
    s.submit(job("wait", user="a", gpus=2, t=1), 1)
    s.tick(3600)
    assert s.explain("wait", 3600).priority_terms["usage_gpu_hours"] == 0  # nothing charged ahead
    sh.finish("run", Outcome.SUCCEEDED, 7200)  # charged now, before the next pass starts "wait"
    assert abs(s.explain("wait", 7200).priority_terms["usage_gpu_hours"] - 4.0) < 0.01  # 2 GPUs x 2 h
