"""The rules of a job's life (``gpuqueue.queue.lifecycle``): a job whose process keeps vanishing is
relaunched a bounded number of times, then fails with the reason, and its retries apply."""

from __future__ import annotations

import sys

from gpuqueue.queue.config import MAX_LOST_ATTEMPTS
from gpuqueue.queue.lifecycle import attempt_outcome, settle
from gpuqueue.queue.models import Attempt, JobRecord, JobSpec
from gpuqueue.queue.states import JobState, Outcome
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
    # a stop that the system asked for is not the job's doing: never counted as a failure
    assert attempt_outcome(job, {"exit_code": None, "stop_reason": "terminated"}, False) == Outcome.LOST


def test_a_job_that_kills_its_runner_is_relaunched_a_bounded_number_of_times(jupyter_server):
    client = jupyter_server.client()
    job = client.submit({"kind": "command", "retries": 0,
                         "command": [sys.executable, "-c", "import os; os.kill(os.getppid(), 9)"]})
    done = wait_until(lambda: (j := client.get(job["id"]))["state"] in ("failed", "succeeded") and j,
                      90, 0.2, "the job to end")
    assert done["state"] == "failed", done
    assert [a["outcome"] for a in done["attempts"]] == ["lost", "lost", "failed"]
    assert "lost 3 times in a row" in done["error"] and "runner.log" in done["error"]
