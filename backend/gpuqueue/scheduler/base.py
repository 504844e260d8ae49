"""The scheduler seam: the types every policy takes and returns, and the Scheduler protocol.

A scheduler is a pure, deterministic object with the clock passed in. It does no I/O: the
embedded loop, the cluster daemon and the trace simulator feed it events and carry out the
decisions it returns. The store, not the scheduler, owns job state: on start, the shell
rebuilds the scheduler from the store with ``submit(..., restoring=True)`` and ``restore_running``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Protocol, Union

from ..queue.states import Outcome, Priority

Placement = dict[str, tuple[int, ...]]
"""node name -> GPU indices on that node (0-based, within the node)."""


@dataclass(frozen=True)
class JobRequest:
    """What the scheduler knows of a job."""

    id: str
    user: str
    pool: str
    gpus: int
    priority: Priority = Priority.MEDIUM
    submit_time: float = 0.0
    nodes: int = 1
    time_limit: Optional[float] = None  # seconds of runtime allowed (None: pool max or none)
    preemptible: bool = False
    max_retries: int = 3
    failures: int = 0  # failed attempts so far (preemption and node loss do not count)
    not_before: float = 0.0  # retry backoff: not eligible to start before this time
    # the user's group as the job's record holds it (QueueConfig.group_of at submit), filled by
    # the shells; "": none; None: the policy asks the config's members
    group: Optional[str] = None


@dataclass(frozen=True)
class Start:
    """Launch the job on these GPUs now. The GPUs are allocated from this moment."""

    job_id: str
    placement: Placement


@dataclass(frozen=True)
class Preempt:
    """Ask the job to checkpoint and stop within ``grace_s``; report ``finished(PREEMPTED)``."""

    job_id: str
    grace_s: float
    reason: str


@dataclass(frozen=True)
class TimeOut:
    """The job ran past its time limit: stop it and report ``finished(TIMED_OUT)``."""

    job_id: str


@dataclass(frozen=True)
class Warn:
    """Tell the job something ahead of an action (e.g. its time limit is near)."""

    job_id: str
    message: str


@dataclass(frozen=True)
class Retry:
    """The attempt ended without success; the job is queued again, eligible from ``at``."""

    job_id: str
    at: float
    counted: bool  # False for preemption and node loss


@dataclass(frozen=True)
class Reject:
    """The job cannot be accepted; ``reason`` tells the user what to change."""

    job_id: str
    reason: str


Decision = Union[Start, Preempt, TimeOut, Warn, Retry, Reject]


@dataclass
class Explanation:
    """Why a pending job waits, for ``gpuqueue show`` and the UI."""

    reason: str  # a code, e.g. "resources", "priority", "quota_gpus", "backoff"
    message: str  # a sentence for people
    position: int  # 1-based position in its pool's order
    priority_terms: dict[str, float] = field(default_factory=dict)
    eta_s: Optional[float] = None  # seconds from now to the expected start, if known

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "reason": self.reason,
            "message": self.message,
            "position": self.position,
            "priority_terms": self.priority_terms,
            "eta_s": self.eta_s,
        }


@dataclass
class PoolPending:
    """The jobs waiting in one pool, for the queue gauges: counts and oldest submit time by
    priority value ("high", "medium", "low"), and how many are past / still in retry backoff."""

    depth: dict[str, int] = field(default_factory=dict)
    oldest_submit: dict[str, float] = field(default_factory=dict)
    eligible: int = 0  # waiting and past any retry backoff
    backoff: int = 0  # waiting for their retry backoff to pass

    def add(self, priority: str, submit_time: float, eligible: bool) -> None:
        """Count one waiting job."""
        self.depth[priority] = self.depth.get(priority, 0) + 1
        if submit_time < self.oldest_submit.get(priority, float("inf")):
            self.oldest_submit[priority] = submit_time
        if eligible:
            self.eligible += 1
        else:
            self.backoff += 1


class NodeView(NamedTuple):
    """One node as the scheduler counts it."""

    name: str
    pool: str
    gpus: int
    free: int  # GPUs not allocated to a job (0 when the node is down)
    up: bool


class Scheduler(Protocol):
    """What every policy implements. All methods are deterministic in their arguments."""

    def submit(self, job: JobRequest, now: float, restoring: bool = False) -> Optional[Reject]:
        """Accept a job into the queue, or say why not. ``restoring`` skips admission limits."""

    def restore_running(self, job: JobRequest, placement: Placement, started_at: float) -> None:
        """At rebuild: this job already holds these GPUs. Raises RuntimeError or KeyError, and
        then knows nothing of the job, if they are not free GPUs of its config."""

    def started(self, job_id: str, now: float) -> None:
        """The job process is confirmed running (its runtime clock starts)."""

    def finished(self, job_id: str, outcome: Outcome, now: float) -> list[Decision]:
        """An attempt ended; its GPUs are free. May return a Retry for the job: PREEMPTED and
        LOST (not counted), FAILED while ``failures < max_retries`` (counted); never for
        SUCCEEDED, CANCELLED, TIMED_OUT or CANNOT_START (a launch no retry would change)."""

    def cancel(self, job_id: str, now: float) -> None:
        """Forget a job (queued or running); a running one's GPUs are freed."""

    def node_up(self, node: str, pool: str, gpus: int, now: float) -> None:
        """A node joined (or came back)."""

    def node_down(self, node: str, now: float) -> list[Decision]:
        """A node is gone: its jobs are lost and come back as Retry decisions."""

    def node_cordon(self, node: str, now: float) -> None:
        """A node is going away (its worker is stopping): no job starts there any more; the jobs
        it runs go on until they end (``finished``) or the node is gone (``node_down``). A later
        ``node_up`` brings it back."""

    def tick(self, now: float) -> list[Decision]:
        """One scheduling pass: starts, preemptions, timeouts."""

    def explain(self, job_id: str, now: float) -> Optional[Explanation]:
        """Why a queued job waits; None if it is not queued."""

    def snapshot(self) -> dict[str, Any]:
        """Pools with GPUs total/used, queue lengths: for the queue summary and metrics."""

    def pending_summary(self, now: float) -> dict[str, PoolPending]:
        """Per pool (every configured pool, empty ones too): the jobs waiting there."""

    def node_views(self) -> list[NodeView]:
        """Every node the scheduler knows, up or down, by name."""

    def next_wakeup(self) -> Optional[float]:
        """The earliest time ``tick`` has work to do (a timeout, a boost, a retry coming due,
        or events since the last pass: then the latest time seen), or None: shells tick then."""

    def export_state(self) -> dict[str, Any]:
        """JSON-ready state worth keeping across restarts (the store keeps it)."""

    def import_state(self, state: dict[str, Any]) -> None:
        """Load what ``export_state`` wrote; call before restoring jobs."""
