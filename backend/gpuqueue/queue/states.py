"""The one vocabulary of job states, shared by the store, the REST API, the CLI and the UI."""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    """Where a job is in its life. Values are the strings the API and the CLI show."""

    QUEUED = "queued"  # accepted, waiting for GPUs (or for its retry time)
    STARTING = "starting"  # GPUs assigned, the job process is being launched
    RUNNING = "running"  # the job process is alive and reporting
    PREEMPTED = "preempted"  # transient: stopped to make room, will be queued again
    RETRYING = "retrying"  # transient: an attempt failed, waiting for its backoff to pass
    SUCCEEDED = "succeeded"  # the cell (or command) ended without error; results are stored
    FAILED = "failed"  # the last allowed attempt raised or exited non-zero, or it cannot start
    CANCELLED = "cancelled"  # the owner or an admin cancelled it
    TIMED_OUT = "timed_out"  # it ran past its time limit and was stopped

    @property
    def is_terminal(self) -> bool:
        """True once the job will never run again."""
        return self in TERMINAL_STATES

    @property
    def is_active(self) -> bool:
        """True while the job holds (or is about to hold) GPUs."""
        return self in ACTIVE_STATES


# The groups of states, defined here only. The API sends them to the sidebar (``GET /queue``,
# ``state_groups``); the Python side of the notebook reads them from here.
WAITING_STATES = (JobState.QUEUED, JobState.RETRYING, JobState.PREEMPTED)
"""In the queue: waiting for GPUs, a retry time, or to be queued again after a preemption."""
ACTIVE_STATES = (JobState.STARTING, JobState.RUNNING)
"""Holding GPUs (or about to)."""
LIVE_STATES = WAITING_STATES + ACTIVE_STATES
"""Not finished: waiting or active. A cell's live job is the one a re-run attaches to."""
TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)
"""Finished for good."""

STATE_GROUPS: dict[str, list[str]] = {
    "waiting": [s.value for s in WAITING_STATES],
    "active": [s.value for s in ACTIVE_STATES],
    "live": [s.value for s in LIVE_STATES],
    "terminal": [s.value for s in JobState if s in TERMINAL_STATES],
}
"""The groups by name, as the API sends them (JSON-ready, in a fixed order)."""


class Priority(str, Enum):
    """The three priority levels a user may ask for."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    rank: int
    """0 for high, 1 for medium, 2 for low: lower sorts first (a plain attribute: the
    scheduler reads it in its inner loops)."""

    def __init__(self, value: str) -> None:
        self.rank = ("high", "medium", "low").index(value)


class Outcome(str, Enum):
    """How one attempt ended (an attempt is one launch of the job process)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the code raised, or the process exited non-zero
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    PREEMPTED = "preempted"  # stopped by the scheduler; not counted as a failure
    LOST = "lost"  # the process or its node vanished without a word; not counted as a failure
    # it could not start (its program, working folder or identity) for a cause a retry meets
    # again (gpuqueue.attempt.launchfail): the job fails at once, no retry is spent on it
    CANNOT_START = "cannot_start"
    # it ran, but its results are over what one job may return (the cluster worker's limit): the
    # same cell would make them again, so the job fails at once, no retry is spent on it
    RESULT_TOO_BIG = "result_too_big"
