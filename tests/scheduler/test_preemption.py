"""The preemption planner, a pure function: which running jobs it picks, and when it says to
try again."""

from __future__ import annotations

from gpuqueue.queue.states import Outcome
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.base import Preempt
from gpuqueue.scheduler.fairshare import preemption
from gpuqueue.scheduler.fairshare.records import RUNNING, Job

from schedtools import config, job


def running(s: FairShareScheduler, jid: str, node: str, gpus: int, started: float, **kw) -> Job:
    """A job that holds ``gpus`` GPUs of ``node`` since ``started``."""
    s.restore_running(job(jid, gpus=gpus, **kw), {node: tuple(range(gpus))}, started)
    j = s.jobs[jid]
    assert j.state == RUNNING
    return j


def plan_for(s: FairShareScheduler, r_id: str, now: float, starved: bool = False) -> preemption.Plan:
    pool = s.pools["p"]
    r = s.jobs[r_id]
    rules = preemption.PreemptionRules("p", pool.nodes.total, False, pool.active_weight,
                                       s.knobs.min_runtime, s.knobs.max_preemptions_per_job, set())
    cands = [jid for ids in pool.victims_by_rank for jid in ids]
    return preemption.plan(rules, s.ledger.users, s.jobs, r, cands, pool.nodes, s.node_index, now, starved)


def test_it_takes_the_lowest_priority_then_the_youngest_on_the_cheapest_node():
    s = FairShareScheduler(config({"p": {"a": 4, "b": 4}}, min_runtime=100))
    running(s, "old_low", "a", 2, 0, pr="low", user="x", preemptible=True)
    s.restore_running(job("young_low", gpus=2, pr="low", user="y", preemptible=True), {"a": (2, 3)}, 50)
    running(s, "med", "b", 4, 0, pr="medium", user="z", preemptible=True)
    s.submit(job("r", gpus=2, pr="high", user="w"), 200)
    got = plan_for(s, "r", 200)
    assert [v.request.id for v in got.victims] == ["young_low"]  # low before medium; youngest low


def test_young_jobs_are_no_victims_yet_and_say_when_they_will_be():
    s = FairShareScheduler(config({"p": {"a": 4}}, min_runtime=600))
    running(s, "low", "a", 4, 100, pr="low", preemptible=True)
    s.submit(job("r", gpus=4, pr="high", user="w"), 200)
    got = plan_for(s, "r", 200)
    assert got.victims == [] and got.retry_at == 700


def test_equal_priority_is_no_victim_unless_the_job_starved():
    s = FairShareScheduler(config({"p": {"a": 4}}, min_runtime=0))
    running(s, "peer", "a", 4, 0, pr="medium", user="x", preemptible=True)
    s.submit(job("r", gpus=4, pr="medium", user="w"), 10)
    s.ledger.users["w"].pool_gpus["p"] = 1  # it holds GPUs here: the under-share rule is off
    assert plan_for(s, "r", 10).victims == []
    assert [v.request.id for v in plan_for(s, "r", 10, starved=True).victims] == ["peer"]


def test_non_preemptible_work_is_never_a_victim():
    s = FairShareScheduler(config({"p": {"a": 4}}, min_runtime=0))
    running(s, "solid", "a", 4, 0, pr="low")
    s.submit(job("r", gpus=4, pr="high", user="w"), 10)
    assert plan_for(s, "r", 10, starved=True).victims == []


def test_where_only_a_multi_node_victim_could_make_room_the_quick_bound_and_the_planner_both_say_no():
    # the planner never stops a multi-node job (it would free GPUs elsewhere too); the quick
    # bound counting one-node victims only (could_fit's third answer) agrees with it, so the
    # policy may skip the planner's walk
    s = FairShareScheduler(config({"p": {"a": 4, "b": 4, "c": 4}}, min_runtime=0))
    s.restore_running(job("wide", gpus=8, nodes=2, pr="low", user="x", preemptible=True),
                      {"a": (0, 1, 2, 3), "b": (0, 1, 2, 3)}, 0)
    running(s, "narrow", "c", 2, 0, pr="low", user="y", preemptible=True)
    s.restore_running(job("solid", gpus=2, pr="low", user="z"), {"c": (2, 3)}, 0)  # not preemptible
    s.submit(job("r", gpus=4, pr="high", user="w"), 10)
    pool, r = s.pools["p"], s.jobs["r"]

    def bound() -> tuple[bool, bool]:
        possible, _, single = preemption.could_fit(pool.nodes, s.node_index, r, (), None, 0, False, 0, 10,
                                                   s.knobs.max_preemptions_per_job)
        return possible, single

    assert bound() == (True, False)  # stopping "wide" would do; no one-node victim would
    assert plan_for(s, "r", 10).victims == []
    s.finished("solid", Outcome.SUCCEEDED, 10)  # now stopping "narrow" makes room on c
    assert bound() == (True, True)
    assert [v.request.id for v in plan_for(s, "r", 10).victims] == ["narrow"]


def test_a_multi_node_job_preempts_once_a_changed_node_completes_a_plan_with_an_unchanged_one():
    # A 2-node high job: node a could be made whole by preempting a low job, node b runs work
    # that cannot be preempted, so the first plan fails and is remembered. When b's job ends,
    # only b changed; a plan needs b *and* the unchanged a. Trying the changed nodes alone
    # (needing two whole nodes among them) found nothing: the job waited for a's job to end.
    s = FairShareScheduler(config({"p": {"a": 8, "b": 8}}, min_runtime=0))
    running(s, "low", "a", 8, 0, pr="low", user="x", preemptible=True)
    running(s, "solid", "b", 8, 0, pr="medium", user="y")
    s.submit(job("r", gpus=16, nodes=2, pr="high", user="w"), 10)
    assert not [d for d in s.tick(10) if isinstance(d, Preempt)]  # b cannot be made whole
    s.finished("solid", Outcome.SUCCEEDED, 20)
    got = [d.job_id for d in s.tick(20) if isinstance(d, Preempt)]
    assert got == ["low"]


def test_a_multi_node_job_counts_a_node_already_free_towards_its_plan():
    # node b is free, node a runs a low preemptible job: stopping that one makes room for the
    # 2-node high job. The planner counted only nodes with victims, so it needed two of them.
    s = FairShareScheduler(config({"p": {"a": 8, "b": 8}}, min_runtime=0))
    running(s, "low", "a", 8, 0, pr="low", user="x", preemptible=True)
    s.submit(job("r", gpus=16, nodes=2, pr="high", user="w"), 10)
    assert [v.request.id for v in plan_for(s, "r", 10).victims] == ["low"]
    assert [d.job_id for d in s.tick(10) if isinstance(d, Preempt)] == ["low"]
