"""The scheduler daemon's reconciliation of what it believes runs with what the workers run.

Every heartbeat of a worker lists the attempts it runs (``worker.py``'s ``beat``: an attempt is
in that list from before its start report until after its end is written, with its exit report,
in one write). An attempt the daemon holds as RUNNING on a node whose worker beats, but that
the worker's beats no longer list, has ended without its end reaching the store: the exit
report was lost (Redis's one-second ``appendfsync everysec`` window on a crash, a failover to a
replica that missed the write). Without this check such a job stayed "running" for ever and held
its owner's quota.

When is an attempt lost: its node's worker (the same instance throughout) has written at least
:data:`MISSING_BEATS` new heartbeats that do not list it, over at least :data:`MISSING_MIN_S`
seconds, and neither its exit record (``exit:<job>:<n>``: an exit report in flight is then
settled from it) nor its tail offset (``tail:<job>:<n>``: the worker still copies its events)
changed meanwhile. Why that is enough, and no false positive:

* only RUNNING attempts are looked at: the daemon marks one RUNNING on the worker's start report,
  which the worker sends for an attempt it already lists. An attempt still being launched
  (claimed, its folders made, its checkpoints pulled) is STARTING and never reaped here, however
  long the launch takes (``--start-timeout`` and the node's heartbeat cover those);
* one thread writes the heartbeats, one after the other: of the beats the daemon sees after it
  marked an attempt RUNNING, only the first can have been computed before the worker added the
  attempt (a beat in flight); the second on lists it. Three give a margin of one;
* the time floor covers the daemon's own reading of the beats (every 0.2 s) and a client's
  retries; with the worker's default ``--heartbeat 5``, three beats take 10-15 s anyway.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..queue.models import JobRecord
from ..queue.states import JobState
from .redis_store import Op, RedisStore

if TYPE_CHECKING:
    from ..scheduler.base import Decision
    from .daemon_nodes import NodeSeen

log = logging.getLogger("gpuqueue.daemon")

MISSING_BEATS = 3  # new heartbeats of its worker that do not list a running attempt ...
MISSING_MIN_S = 10.0  # ... over at least this long: the attempt is lost
CHECK_EVERY_S = 1.0  # how often the running attempts are compared with the beats


@dataclass
class Unlisted:
    """A running attempt the last beats of its node did not list."""

    number: int
    instance: str  # the worker whose beats did not list it
    beats: int  # that node's beat count when first not listed, less one (that beat counts)
    since: float  # monotonic
    tail: Optional[str]  # its tail offset then


class Reconcile:
    """The daemon's comparison of its running attempts with the workers' heartbeats (a mixin of
    ``Daemon``, which sets the attributes below)."""

    store: RedisStore
    known: set[str]
    jobs: dict[str, JobRecord]
    nodes: dict[str, "NodeSeen"]
    unlisted: dict[str, Unlisted]
    _last_reconcile: float

    if TYPE_CHECKING:
        def _find(self, job_id: str) -> Optional[JobRecord]: ...

        def _exec(self, ops: list[Op]) -> None: ...

        def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any],
                         decisions: Optional[list["Decision"]] = None) -> None: ...

    def _reconcile(self, force: bool = False) -> None:
        """End as lost each running attempt its live worker has not listed for long enough
        (see the module's docstring)."""
        now = time.monotonic()
        if not force and now - self._last_reconcile < CHECK_EVERY_S:
            return
        self._last_reconcile = now
        suspects = set()
        for job_id in list(self.known):
            job = self.jobs.get(job_id) or self._find(job_id)  # cached: a store read only after a failed change
            if job is None or job.state != JobState.RUNNING:  # queued ones first out: the loop stays cheap
                continue
            a = job.current_attempt
            if a is None or a.outcome is not None:
                continue
            seen = self.nodes.get(a.node)
            if seen is None or seen.running is None:  # down (its jobs are requeued), or a worker without the list
                continue
            if f"{job.id}:{a.number}" in seen.running:
                continue
            suspects.add(job_id)
            u = self.unlisted.get(job_id)
            if u is None or u.number != a.number or u.instance != seen.instance:
                self.unlisted[job_id] = Unlisted(a.number, seen.instance, seen.beats - 1, now,
                                                 self.store.r.get(self.store.k("tail", job.id, a.number)))
                continue
            if seen.beats - u.beats >= MISSING_BEATS and now - u.since >= MISSING_MIN_S:
                self._unlisted_for_long(job, u, seen, now)
        for job_id in set(self.unlisted) - suspects:
            del self.unlisted[job_id]

    def _unlisted_for_long(self, job: JobRecord, u: Unlisted, seen: "NodeSeen", now: float) -> None:
        """Settle the attempt from its exit record if the store has one (its report is in
        flight), wait again if its tail moved, else end it as lost, saying what happened."""
        a = job.current_attempt
        assert a is not None
        st = self.store
        exit_rec = st.get_json("exit", job.id, a.number)
        if exit_rec is not None:
            del self.unlisted[job.id]
            self._end_attempt(job, exit_rec)
            return
        tail = st.r.get(st.k("tail", job.id, a.number))
        if tail != u.tail:  # its worker still writes for it: not lost
            u.since, u.beats, u.tail = now, seen.beats, tail
            return
        del self.unlisted[job.id]
        waited = now - u.since
        error = (f"lost: the worker on node {a.node} does not run this attempt (its last {seen.beats - u.beats} "
                 f"heartbeats, over {waited:.0f} s, did not list it), and the attempt's end was not recorded: its exit "
                 f"report never reached the queue's store (e.g. lost in a store failover or a Redis restart that lost "
                 f"its last writes). The attempt counts as lost: the queue starts the job again")
        log.warning("job %s: attempt %s on node %s: %s", job.id, a.number, a.node, error)
        self._exec([st.event_op(job.id, "warning", {"message": error})])
        self._end_attempt(job, {"exit_code": None, "lost": True, "error": error})
