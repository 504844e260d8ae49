"""Predicted ends of running jobs that gave no time limit, learnt from the policy's own history.

Most jobs of a GPU cluster give no time limit, so their end estimate (``Job.ends_at``) is INF
and a reservation cannot tell which node drains first. As Tsafrir, Etsion and Feitelson (2007)
did for backfilling, the policy predicts from what it saw: a job's runtime is predicted as the
mean of the last ``HISTORY`` runtimes of its user's successful jobs of the same GPU count (else
of any GPU count), and a job that has run longer than half that is predicted to run as long
again as it has run (runtimes are heavy-tailed: Tiresias' premise). So the predicted end is

    started + max(predicted runtime, 2 × age)

(``age``: the runtime of all its attempts so far); with no history, ``now + age``, which ranks
nodes as ``reservations.drain_age`` does. A job with a known end keeps it. Deterministic: it
depends only on the events the policy was given. The history is not kept across restarts.
"""

from __future__ import annotations

from typing import Optional

from ...queue.states import Outcome
from .records import INF, Job

HISTORY = 2
"""Runtimes remembered per (user, GPUs) and per user: Tsafrir et al.'s average of the last two."""


class RuntimePredictor:
    """The last runtimes of each user's successful jobs, and predicted ends of running jobs."""

    __slots__ = ("by_shape", "by_user", "ran")

    def __init__(self) -> None:
        self.by_shape: dict[tuple[str, int], list[float]] = {}  # (user, GPUs) -> last runtimes
        self.by_user: dict[str, list[float]] = {}  # user -> last runtimes, any GPU count
        self.ran: dict[str, float] = {}  # job id -> runtime of its earlier (preempted, lost) attempts

    def ended(self, j: Job, outcome: Outcome, now: float) -> None:
        """An attempt of ``j`` (started at ``j.started_at``) ended at ``now``: remember its
        runtime until the job ends, and learn the whole runtime of a job that succeeded."""
        jid = j.request.id
        ran = self.ran.pop(jid, 0.0) + max(0.0, now - j.started_at)
        if outcome in (Outcome.PREEMPTED, Outcome.LOST):
            self.ran[jid] = ran
        elif outcome == Outcome.SUCCEEDED:
            req = j.request
            _remember(self.by_shape.setdefault((req.user, req.gpus), []), ran)
            _remember(self.by_user.setdefault(req.user, []), ran)

    def forget(self, job_id: str) -> None:
        """The job is gone (ended, cancelled): drop what was kept of its earlier attempts."""
        self.ran.pop(job_id, None)

    def runtime(self, user: str, gpus: int) -> Optional[float]:
        """The predicted runtime of a new job of ``user`` with ``gpus`` GPUs (None: no history)."""
        last = self.by_shape.get((user, gpus)) or self.by_user.get(user)
        return sum(last) / len(last) if last else None

    def end(self, j: Job, now: float) -> float:
        """When the running job ``j`` is expected to give its GPUs back: its known end, else
        the predicted one (never before ``now``)."""
        if j.ends_at < INF:
            return j.ends_at
        age = self.ran.get(j.request.id, 0.0) + max(0.0, now - j.started_at)
        runtime = self.runtime(j.request.user, j.request.gpus)
        remaining = age if runtime is None else max(runtime - age, age)
        return now + remaining


def _remember(last: list[float], runtime: float) -> None:
    last.append(runtime)
    if len(last) > HISTORY:
        del last[0]
