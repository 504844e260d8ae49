"""Predicted ends of running jobs with no time limit (``fairshare/predict.py``) and the nodes a
reservation drains by them."""

from __future__ import annotations

from gpuqueue.queue.states import Outcome
from gpuqueue.scheduler import FairShareScheduler
from gpuqueue.scheduler.fairshare.predict import RuntimePredictor
from gpuqueue.scheduler.fairshare.records import Job

from schedtools import Shell, config, job


def running(id: str, user: str, gpus: int, started: float, ends: float = float("inf")) -> Job:
    j = Job(job(id, user=user, gpus=gpus), seq=0)
    j.started_at, j.ends_at = started, ends
    return j


def test_the_prediction_is_the_mean_of_the_users_last_two_runtimes_of_that_size():
    p = RuntimePredictor()
    assert p.runtime("a", 8) is None
    for runtime in (100.0, 200.0, 400.0):
        p.ended(running("x", "a", 8, 1000.0), Outcome.SUCCEEDED, 1000.0 + runtime)
    assert p.runtime("a", 8) == 300.0  # the last two
    assert p.runtime("a", 1) == 300.0  # no history of that size: the user's, any size
    p.ended(running("y", "a", 1, 0.0), Outcome.SUCCEEDED, 50.0)
    assert p.runtime("a", 1) == 50.0 and p.runtime("a", 8) == 300.0
    p.ended(running("z", "a", 1, 0.0), Outcome.FAILED, 5000.0)  # failures teach nothing
    assert p.runtime("a", 1) == 50.0
    assert p.runtime("b", 8) is None


def test_a_preempted_job_counts_all_its_attempts():
    p = RuntimePredictor()
    p.ended(running("x", "a", 8, 0.0), Outcome.PREEMPTED, 600.0)
    later = running("x", "a", 8, 1000.0)
    assert p.end(later, 1100.0) == 1100.0 + 700.0  # no history: as long again as it ran (600 + 100)
    p.ended(later, Outcome.SUCCEEDED, 1400.0)
    assert p.runtime("a", 8) == 1000.0
    assert p.ran == {}


def test_predicted_end_is_the_known_end_or_start_plus_the_larger_of_runtime_and_twice_the_age():
    p = RuntimePredictor()
    p.ended(running("x", "a", 8, 0.0), Outcome.SUCCEEDED, 3600.0)
    assert p.end(running("k", "a", 8, 0.0, ends=900.0), 100.0) == 900.0  # a time limit wins
    young = running("j", "a", 8, 1000.0)
    assert p.end(young, 1000.0) == 4600.0  # the user's runtime
    assert p.end(young, 2000.0) == 4600.0
    assert p.end(young, 5000.0) == 9000.0  # ran 4000 s past it: as long again
    assert p.end(running("n", "b", 8, 1000.0), 1500.0) == 2000.0  # no history: as long again


def test_a_starved_job_drains_the_node_its_users_history_says_frees_first():
    """No job gives a time limit. Node a runs a job of a user whose jobs took 10 min, running
    for 72 min now; node b one of a user whose jobs took 10 h, running for 12 min. By age alone
    (``drain_age``) b drains first; by their users' history a does: the starved 4-GPU job
    reserves a, a later 1-GPU job goes to b, and the 4-GPU job starts when a's job ends."""
    placed = {}
    for mode in ("off", "nodes", "shadow", "ties"):
        s = FairShareScheduler(config({"p": {"a": 4, "b": 4}}, predict_ends=mode))
        sh = Shell(s)
        s.submit(job("q1", user="quick", gpus=3), 0)
        s.submit(job("s1", user="slow", gpus=3), 0)
        sh.apply(s.tick(0), 0)
        sh.finish("q1", Outcome.SUCCEEDED, 600)
        sh.finish("s1", Outcome.SUCCEEDED, 36000)
        s.submit(job("q2", user="quick", gpus=3, t=36000), 36000)
        sh.apply(s.tick(36000), 36000)
        s.submit(job("s2", user="slow", gpus=3, t=39600), 39600)
        sh.apply(s.tick(39600), 39600)
        assert set(sh.running["q2"]) == {"a"} and set(sh.running["s2"]) == {"b"}
        s.submit(job("big", user="z", gpus=4, t=39600), 39600)
        now = 40320.0  # past the pool's starvation timeout (600 s)
        sh.apply(s.tick(now), now)
        assert s.explain("big", now).reason == "starved"
        s.submit(job("small", user="w", t=now), now)
        sh.apply(s.tick(now), now)
        placed[mode] = set(sh.running["small"])
        if mode != "off":
            sh.finish("q2", Outcome.SUCCEEDED, 45000)
            sh.apply(s.tick(45000), 45000)
            assert set(sh.running["big"]) == {"a"}
    assert placed == {"off": {"a"}, "nodes": {"b"}, "shadow": {"b"}, "ties": {"b"}}
