"""The rules of a job's life (``gpuqueue.queue.lifecycle``): a job whose process keeps vanishing is
relaunched a bounded number of times, then fails with the reason, and its retries apply."""

from __future__ import annotations

import sys

import errno

import pytest

from gpuqueue.attempt import launchfail
from gpuqueue.queue.config import MAX_LOST_ATTEMPTS, QueueConfig
from gpuqueue.queue.lifecycle import attempt_outcome, settle
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec
from gpuqueue.queue.states import JobState, Outcome
from gpuqueue.scheduler import make_scheduler
from gpuqueue.scheduler.base import JobRequest, Retry
from helpers.servers import wait_until

LOST = {"exit_code": None, "stop_reason": None, "lost": True}


def _job(outcomes: list[Outcome]) -> JobRecord:
    attempts = [Attempt(number=i + 1, node="n", started_at=0.0, outcome=o) for i, o in enumerate(outcomes)]
    attempts.append(Attempt(number=len(outcomes) + 1, node="n", started_at=0.0))
    return JobRecord(id="j-1", owner="u", spec=JobSpec(kind="command", command=["true"]), attempts=attempts)


def test_the_lost_attempt_that_makes_the_limit_counts_as_failed():
    assert MAX_LOST_ATTEMPTS == 3
    assert attempt_outcome(_job([Outcome.LOST]), LOST, False) == Outcome.LOST
    assert attempt_outcome(_job([Outcome.FAILED, Outcome.LOST]), LOST, False) == Outcome.LOST  # in a row only
    job = _job([Outcome.LOST, Outcome.LOST])
    assert attempt_outcome(job, LOST, False) == Outcome.FAILED
    assert attempt_outcome(job, LOST, False, max_lost=5) == Outcome.LOST
    state, info = settle(job, Outcome.FAILED, LOST, [], 1.0)
    assert state == JobState.FAILED
    assert info["error"].startswith("the job process was lost 3 times in a row: its runner died without an exit record")
    # lost with its node: the node's words, not a runner.log its node took with it
    node_gone = {**LOST, "error": "node n1 stopped answering: no heartbeat from its worker for 30s"}
    state, info = settle(_job([Outcome.LOST, Outcome.LOST]), Outcome.FAILED, node_gone, [], 1.0)
    assert info["error"] == ("the job process was lost 3 times in a row; the last time: node n1 stopped answering: "
                             "no heartbeat from its worker for 30s"), info
    # a stop that the system asked for is not the job's doing: never counted as a failure
    assert attempt_outcome(job, {"exit_code": None, "stop_reason": "terminated"}, False) == Outcome.LOST


@pytest.mark.parametrize("policy", ["gpuqueue", "fifo"])
def test_a_launch_no_retry_would_change_fails_at_once_and_a_passing_one_is_retried(policy):
    """One rule (``launchfail.permanent``) sorts the launch failures; both policies retry a
    FAILED attempt and never one that CANNOT_START."""
    full = launchfail.record(launchfail.FOLDER, OSError(errno.ENOSPC, "No space left on device"), "/srv/q/work/j-1",
                             node="n1")
    gone = launchfail.record(launchfail.EXEC, FileNotFoundError(errno.ENOENT, "No such file", "/opt/venv/bin/python"),
                             user={"name": "ana", "uid": 1003}, node="n1")
    ends = {"full": {"exit_code": 127, "launch_error": full}, "gone": {"exit_code": 127, "launch_error": gone}}
    outcomes = {k: attempt_outcome(_job([]), rec, False) for k, rec in ends.items()}
    assert outcomes == {"full": Outcome.FAILED, "gone": Outcome.CANNOT_START}
    cfg = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"n1": 1}}}})
    sched = make_scheduler(cfg, policy)
    sched.node_up("n1", "gpu", 1, 0.0)
    for k in ends:
        assert sched.submit(JobRequest(id=k, user="ana", pool="gpu", gpus=1, max_retries=3), 0.0) is None
    sched.tick(1.0)
    sched.tick(2.0)
    decisions = {k: sched.finished(k, outcomes[k], 3.0) for k in ends}
    assert [type(d) for d in decisions["full"]] == [Retry] and decisions["gone"] == []
    job = _job([]).model_copy(update={"id": "gone"})
    state, info = settle(job, Outcome.CANNOT_START, ends["gone"], decisions["gone"], 3.0)
    assert state == JobState.FAILED and info["error"] == job.error == (
        "the job could not start on node n1: /opt/venv/bin/python does not exist: fix the path (the job's first "
        "word, or its --python), or ask your admin to install it there")
    job = _job([]).model_copy(update={"id": "full"})
    state, info = settle(job, Outcome.FAILED, ends["full"], decisions["full"], 3.0)
    assert state == JobState.RETRYING and job.failures == 1 and info["error"].startswith(
        "the job could not start on node n1: its folder /srv/q/work/j-1 cannot be made (No space left on device)")


@pytest.mark.parametrize("policy", ["gpuqueue", "fifo"])
def test_a_preempted_attempt_puts_its_job_back_in_queued_and_spends_no_retry(policy):
    """docs/job-states.md: a preemption requeues the job at once without counting a failure, even
    with no retries left; the job goes straight back to ``queued`` (no job ever holds the state
    ``preempted``: that word is the attempt's outcome)."""
    cfg = QueueConfig.model_validate({"pools": {"gpu": {"nodes": {"n1": 1}}}})
    sched = make_scheduler(cfg, policy)
    sched.node_up("n1", "gpu", 1, 0.0)
    assert sched.submit(JobRequest(id="p", user="ana", pool="gpu", gpus=1, max_retries=0), 0.0) is None
    sched.tick(1.0)
    decisions = sched.finished("p", Outcome.PREEMPTED, 3.0)
    job = _job([]).model_copy(update={"id": "p"})
    state, info = settle(job, Outcome.PREEMPTED, {"exit_code": None, "stop_reason": "preempted"}, decisions, 3.0)
    assert state == JobState.QUEUED and info["after"] == "preempted"
    assert (job.failures, job.preemptions, job.attempts[-1].outcome) == (0, 1, Outcome.PREEMPTED)


def test_a_job_that_kills_its_runner_is_relaunched_a_bounded_number_of_times(jupyter_server):
    client = jupyter_server.client()
    job = client.submit({"kind": "command", "retries": 0,
                         "command": [sys.executable, "-c", "import os; os.kill(os.getppid(), 9)"]})
    done = wait_until(lambda: (j := client.get(job["id"]))["state"] in ("failed", "succeeded") and j,
                      90, 0.2, "the job to end")
    assert done["state"] == "failed", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "lost", "failed"]
    assert done["error"].startswith("the job process was lost 3 times in a row; the last time: the runner of this "
                                    "attempt on node local was killed by SIGKILL"), done["error"]
