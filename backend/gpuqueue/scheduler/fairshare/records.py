"""The fair-share policy's records: a job as the policy tracks it, its states, the reasons it
waits, and the keys the queue structures group jobs by."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

from ...queue.text import count
from ..base import JobRequest, Placement
from .ledger import ShareKey

INF = math.inf

QueueKey = tuple[int, bool, bool]
"""How pending jobs are grouped in the queue structures: (GPUs, has a time limit,
preemptible). Backfill visits only the groups that may still start: a job without a time limit
can never end before a reservation's shadow time, and only a preemptible one may borrow GPUs
set aside for a starved job, so each is a group of its own."""

JobClass = tuple[int, int, float, bool]
"""(GPUs, nodes, time limit or INF, preemptible): the pending jobs of a pool are counted by
class, so a pass can tell when nothing left can start (see ``SchedulingPass.fit_keys``)."""


def class_key(job_class: JobClass) -> QueueKey:
    """The queue key of a job class: the one place it is computed, so a job is filed and
    removed under the same key whatever its time limit."""
    return (job_class[0], job_class[2] < INF, job_class[3])


N_TIERS = 5
TIER_NAMES = {0: "high", 1: "boosted", 2: "medium", 3: "boosted", 4: "low"}

# A job's state inside the policy (plain strings: compared in the hottest loops)
WAITING = "waiting"  # in retry backoff (not_before in the future)
PENDING = "pending"  # in its pool's queue
RUNNING = "running"  # holds GPUs
STOPPING = "stopping"  # holds GPUs, asked to stop (preempted)


class BehindReservation(NamedTuple):
    """Free GPUs would fit this job, but they are set aside for other jobs (starting it there
    would delay their reserved start)."""

    reserved: str  # the first of them

    def __str__(self) -> str:
        return f"starting now would delay the reserved start of job {self.reserved}"


class WaitingForGpus(NamedTuple):
    """Not enough GPUs are free for this job; ``reserved`` holds the pool's reservation."""

    gpus: int
    pool: str
    free: int
    total: int
    reserved: str

    def __str__(self) -> str:
        return (f"waiting for {count(self.gpus, 'GPU')} in pool {self.pool!r} ({self.free}/{self.total} free) "
                f"behind job {self.reserved}")


class Starved(NamedTuple):
    """The job waited past its starvation time: it goes first (``reserved``: and GPUs are set
    aside for it; else it takes the next GPU that frees up)."""

    pool: str
    free: int
    total: int
    reserved: bool

    def __str__(self) -> str:
        then = "GPUs are set aside for it" if self.reserved else "it takes the next free GPU"
        return f"waited past pool {self.pool!r}'s starvation time: {then} ({self.free}/{self.total} free now)"


class Reserved(NamedTuple):
    """The first job of the fair order that does not fit: GPUs are set aside for it."""

    gpus: int
    pool: str
    free: int
    total: int

    def __str__(self) -> str:
        return (f"waiting for {count(self.gpus, 'GPU')} in pool {self.pool!r} ({self.free}/{self.total} free); "
                "GPUs are reserved for it")


ReasonMessage = Union[str, BehindReservation, WaitingForGpus, Starved, Reserved]
"""What ``explain`` says; the pass stores the frequent ones as records, formatted on demand."""


@dataclass(eq=False, slots=True)
class Job:
    """A job as the policy tracks it, from submission until it ends or is cancelled."""

    request: JobRequest
    seq: int  # submission order (ties of submit time)
    state: str = PENDING
    tier: int = 0
    job_class: JobClass = (0, 0, INF, False)  # as filed in the queue (removed under the same)
    queue_version: int = 0  # bumps whenever the job moves between queue structures
    limit: Optional[float] = None  # runtime limit in seconds (FairShareScheduler.limit)
    starve_after: float = 0.0  # seconds of waiting after which it starves (0: never)
    starved: bool = False  # it had starved when last queued
    attempt: int = 0
    placement: Optional[Placement] = None
    started_at: float = 0.0
    ends_at: float = INF  # while it holds GPUs: when it gives them back at the latest, if known
    charged_scaled: float = 0.0  # usage added (scaled units, see ledger) for this attempt so far
    charged_until: float = 0.0  # runtime seconds charged ahead so far
    preemptions: int = 0
    borrowed: bool = False  # this attempt runs on GPUs set aside for a starved job
    preempted_for: Optional[str] = None  # the job it stops for, while STOPPING
    stop_by: float = 0.0
    warned: bool = False
    timeout_sent: bool = False
    reason: str = "new"
    reason_message: ReasonMessage = "not yet considered by a scheduling pass"
    seen_in_pass: int = -1  # the pool's pass number when the reason was set

    @property
    def order_key(self) -> tuple[float, int, str]:
        """(submit time, seq, id): a user's jobs go oldest first."""
        return (self.request.submit_time, self.seq, self.request.id)


UserEntry = tuple[ShareKey, str, int]
"""(share key, user, version): a user in a pool's user heap (lazy: stale when ``version`` is not
the user's). A plain tuple: pushed at every charge, the hottest allocation of the policy."""


class AgeEntry(NamedTuple):
    """A job in a pool's age heap (lazy: stale when ``queue_version`` is not the job's)."""

    submit_time: float
    seq: int
    job_id: str
    queue_version: int


JobTimer = tuple[float, int, str, int]
"""(at, seq, job id, queue version): a retry or boost due at ``at`` (stale when the job's
queue_version moved on). A plain tuple: pushed for every job that enters the queue."""

AttemptTimer = tuple[float, int, str, int, int]
"""(at, seq, job id, attempt, kind): a usage charge, time-limit warning or timeout of an
attempt (kinds in ``timers``; stale when the job's attempt moved on). A plain tuple: pushed
at every start."""
