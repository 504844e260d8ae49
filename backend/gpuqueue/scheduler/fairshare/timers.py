"""The policy's timers: when a pending job changes tier, a waiting job's backoff ends, a running
attempt gets its time-limit warning and timeout, and its next usage chunk is charged. Lazy heaps:
an entry whose job moved on (another queue version or attempt) is skipped when it comes due."""

from __future__ import annotations

import heapq
from typing import Iterator, Optional, TypeVar

from .records import PENDING, RUNNING, STOPPING, WAITING, AttemptTimer, Job, JobTimer

WARN, TIMEOUT, CHARGE = 0, 1, 2  # AttemptTimer kinds

Entry = TypeVar("Entry", JobTimer, AttemptTimer)


class Timers:
    """The four timer heaps (see the module docstring)."""

    def __init__(self) -> None:
        self.boosts: list[JobTimer] = []  # a pending job's next change of tier (or aging)
        self.retries: list[JobTimer] = []  # a waiting job's end of backoff
        self.deadlines: list[AttemptTimer] = []  # time-limit warnings and timeouts
        self.charges: list[AttemptTimer] = []  # the next usage chunk of a running attempt

    def retry_at(self, job: Job, at: float) -> None:
        """The waiting job becomes eligible at ``at``."""
        heapq.heappush(self.retries, (at, job.seq, job.request.id, job.queue_version))

    def boost_at(self, job: Job, at: float) -> None:
        """The pending job's place in the order changes at ``at``."""
        heapq.heappush(self.boosts, (at, job.seq, job.request.id, job.queue_version))

    def charge_at(self, job: Job, at: float) -> None:
        """Charge the running attempt's next usage chunk at ``at``."""
        heapq.heappush(self.charges, (at, job.seq, job.request.id, job.attempt, CHARGE))

    def limit_at(self, job: Job, end: float, warning: float) -> None:
        """Warn ``warning`` seconds before ``end`` (if > 0), time out at ``end``."""
        if warning > 0:
            heapq.heappush(self.deadlines, (end - warning, job.seq, job.request.id, job.attempt, WARN))
        heapq.heappush(self.deadlines, (end, job.seq, job.request.id, job.attempt, TIMEOUT))

    @staticmethod
    def due(heap: list[Entry], now: float) -> Iterator[Entry]:
        """Pop the entries due by ``now``, earliest first (entries pushed meanwhile included)."""
        while heap and heap[0][0] <= now:
            yield heapq.heappop(heap)

    def earliest(self, jobs: dict[str, Job]) -> Optional[float]:
        """The earliest live timer, dropping stale ones from the heap tops; None if none.
        (Asked after every event by the simulator: plain loops, no closures.)"""
        best: Optional[float] = None
        pop = heapq.heappop
        for h in (self.deadlines, self.charges):  # live: the same attempt, still holding GPUs
            while h:
                e = h[0]
                j = jobs.get(e[2])
                if j is not None and j.attempt == e[3] and (j.state == RUNNING or j.state == STOPPING):
                    if best is None or e[0] < best:
                        best = e[0]
                    break
                pop(h)
        for q, state in ((self.retries, WAITING), (self.boosts, PENDING)):  # live: same version
            while q:
                t = q[0]
                j = jobs.get(t[2])
                if j is not None and j.state == state and j.queue_version == t[3]:
                    if best is None or t[0] < best:
                        best = t[0]
                    break
                pop(q)
        return best
