"""The scheduler daemon's reconciliation of what it believes runs with what the workers run.

Every heartbeat of a worker lists the attempts it runs (``worker.py``'s ``beat``: an attempt is
in that list from before its start report until after its end is written, with its exit report,
in one write) and, for workers of this version on, those it has claimed and is launching. An
attempt the daemon holds as RUNNING (or, claimed, as STARTING) on a node whose worker beats, but
that the worker's beats no longer list, has ended without its end reaching the store: the exit
report was lost, and for a STARTING one its start report too (Redis's one-second ``appendfsync
everysec`` window on a crash, a failover to a replica that missed the write). Without this check
such a job stayed "running" (or "starting") for ever and held its owner's quota.

The other way round: an attempt the daemon holds as STARTING that the worker's beats list as
running (its runner started) for as long, while the store has no start record of it
(``started:<job>:<n>``), lost its start report alone, and showed STARTING for its whole run. It
is moved to RUNNING from the beats (:meth:`Reconcile._started_unreported`): started at the latest
when the daemon first saw it listed (the report's own time is lost with it), a note in the job's
stream saying so. A start record in the store (the report still in flight) is used as it is; a
start report that comes after all, once the attempt is RUNNING, adds its runner's pid and start
time to the record without another change of state (:meth:`Reconcile._started_late`).

When is an attempt lost: its node's worker (the same instance throughout) has written at least
:data:`MISSING_BEATS` new heartbeats that do not list it, over at least :data:`MISSING_MIN_S`
seconds, and neither its exit record (``exit:<job>:<n>``: an exit report in flight is then
settled from it) nor its tail offset (``tail:<job>:<n>``: the worker still copies its events)
changed meanwhile. Why that is enough, and no false positive:

* a RUNNING attempt: the daemon marks one RUNNING on the worker's start report, which the worker
  sends for an attempt it already lists;
* a STARTING attempt (its start report lost too, or the launch still under way) only if its
  worker's beats are of the kind that lists the attempts it launches (``launching``: claimed, its
  folders made, its checkpoints pulled, however long that takes), and only once the store holds
  its claim by that very worker (``claim:<job>:<n>``). The worker lists an attempt as launching
  from before it writes the claim until it lists it as running. An attempt not claimed may still
  sit in the node's Celery queue: ``--start-timeout`` covers that, never this check; a worker
  without the ``launching`` list (an older version, in a rolling upgrade) never gets a STARTING
  attempt reaped. The claim and the heartbeat are read in one command: of the beats after the
  one read with the claim, only the first can have been computed before the worker listed the
  attempt;
* one thread writes the heartbeats, one after the other: of the beats the daemon sees after it
  marked an attempt RUNNING, only the first can have been computed before the worker added the
  attempt (a beat in flight); the second on lists it. Three give a margin of one;
* the time floor covers the daemon's own reading of the beats (every 0.2 s) and a client's
  retries; with the worker's default ``--heartbeat 5``, three beats take 10-15 s anyway.
"""

from __future__ import annotations

import json
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
    beats: int  # that node's beat count from which on unlisting beats count (see _reconcile)
    since: float  # monotonic
    tail: Optional[str]  # its tail offset then
    running: bool = False  # the other way round: a STARTING attempt the beats list as running
    seen_at: float = 0.0  # wall time it was first seen so


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

        def _on_started(self, job: JobRecord, m: dict[str, Any]) -> None: ...

    def _reconcile(self, force: bool = False) -> None:
        """End as lost each running attempt its live worker has not listed for long enough, and
        mark RUNNING each starting one it has listed as running for as long without a start
        report (see the module's docstring)."""
        now = time.monotonic()
        if not force and now - self._last_reconcile < CHECK_EVERY_S:
            return
        self._last_reconcile = now
        suspects = set()
        for job_id in list(self.known):
            job = self.jobs.get(job_id) or self._find(job_id)  # cached: a store read only after a failed change
            if job is None or job.state not in (JobState.RUNNING, JobState.STARTING):  # the loop stays cheap
                continue
            a = job.current_attempt
            if a is None or a.outcome is not None:
                continue
            seen = self.nodes.get(a.node)
            if seen is None or seen.running is None:  # down (its jobs are requeued), or a worker without the list
                continue
            key = f"{job.id}:{a.number}"
            starting = job.state == JobState.STARTING
            listed = key in seen.running
            if listed and not starting:
                continue
            if not listed and starting and (seen.launching is None or key in seen.launching):  # an older worker,
                continue  # or launching
            u = self.unlisted.get(job_id)
            if u is None or u.number != a.number or u.instance != seen.instance or u.running != listed:
                first = seen.beats - 1 if listed else self._first_unlisted(job, seen, starting)
                if first is not None:
                    suspects.add(job_id)
                    tail = None if listed else self.store.r.get(self.store.k("tail", job.id, a.number))
                    self.unlisted[job_id] = Unlisted(a.number, seen.instance, first, now, tail, listed, time.time())
                continue
            suspects.add(job_id)
            if seen.beats - u.beats >= MISSING_BEATS and now - u.since >= MISSING_MIN_S:
                if u.running:
                    self._started_unreported(job, u, seen, now)
                else:
                    self._unlisted_for_long(job, u, seen, now)
        for job_id in set(self.unlisted) - suspects:
            del self.unlisted[job_id]

    def _first_unlisted(self, job: JobRecord, seen: "NodeSeen", starting: bool) -> Optional[int]:
        """The beat count from which on the beats that do not list the job's attempt count (None:
        not a suspect). A running attempt: the last beat seen counts. A starting one: only if the
        store holds its claim by this worker, and only the beats after the one read with it."""
        if not starting:
            return seen.beats - 1
        a = job.current_attempt
        assert a is not None
        st = self.store
        claim, raw = st.r.mget([st.k("claim", job.id, a.number), st.k("hb", a.node)])
        if claim != seen.instance or raw is None:  # not claimed (maybe still queued), or by another instance
            return None
        hb = json.loads(raw)
        if hb.get("instance") != seen.instance or not isinstance(hb.get("seq"), int) \
                or not isinstance(seen.beat, int):
            return None
        return seen.beats + max(0, hb["seq"] - seen.beat)  # beats up to that one, not yet counted, do not count

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
        if job.state == JobState.STARTING:
            error = (f"lost: the worker on node {a.node} claimed this attempt but neither launches nor runs it (its "
                     f"last {seen.beats - u.beats} heartbeats, over {waited:.0f} s, listed it neither as launching nor "
                     f"as running), and neither the attempt's start nor its end was recorded: its start and exit "
                     f"reports never reached the queue's store (e.g. lost in a store failover or a Redis restart that "
                     f"lost its last writes). The attempt counts as lost: the queue starts the job again")
        else:
            error = (f"lost: the worker on node {a.node} does not run this attempt (its last {seen.beats - u.beats} "
                     f"heartbeats, over {waited:.0f} s, did not list it), and the attempt's end was not recorded: its "
                     f"exit report never reached the queue's store (e.g. lost in a store failover or a Redis restart "
                     f"that lost its last writes). The attempt counts as lost: the queue starts the job again")
        log.warning("job %s: attempt %s on node %s: %s", job.id, a.number, a.node, error)
        self._exec([st.event_op(job.id, "warning", {"message": error})])
        self._end_attempt(job, {"exit_code": None, "lost": True, "error": error})

    def _started_unreported(self, job: JobRecord, u: Unlisted, seen: "NodeSeen", now: float) -> None:
        """A STARTING attempt its worker has listed as running for long enough: settled from its
        exit record if the store has one, started from its start record if it has that (their
        reports are in flight), else moved to RUNNING from the beats, saying so in its stream."""
        a = job.current_attempt
        assert a is not None
        st = self.store
        del self.unlisted[job.id]
        exit_rec = st.get_json("exit", job.id, a.number)
        if exit_rec is not None:
            self._end_attempt(job, exit_rec)
            return
        started = st.get_json("started", job.id, a.number)
        if started is not None:
            self._on_started(job, started)
            return
        note = (f"the worker on node {a.node} runs this attempt (its last {seen.beats - u.beats} heartbeats, over "
                f"{now - u.since:.0f} s, listed it as running), but its start was not recorded: its start report "
                f"never reached the queue's store (e.g. lost in a store failover or a Redis restart that lost its "
                f"last writes). It counts as running since its worker's heartbeats first listed it")
        log.warning("job %s: attempt %s on node %s: %s", job.id, a.number, a.node, note)
        self._on_started(job, {"t": u.seen_at, "pid": None})
        self._exec([st.event_op(job.id, "info", {"message": note})])

    def _started_late(self, job: JobRecord, m: dict[str, Any]) -> None:
        """The start report ``m`` of an attempt the beats already moved to RUNNING came after all
        (held up, not lost): what it says is recorded, its runner's pid and when the runner
        started (the beats only gave a time at the latest); the state, and its event, stay."""
        a = job.current_attempt
        assert a is not None
        a.pid = m.get("pid")
        if m.get("t"):
            a.started_at = float(m["t"])
        self._exec(self.store.job_ops(job))
        log.info("job %s: attempt %s on node %s: its start report came after its worker's heartbeats had shown it "
                 "running: runner pid %s, started at %s recorded", job.id, a.number, a.node, a.pid, a.started_at)
