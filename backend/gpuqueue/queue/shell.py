"""The imperative shell around a scheduling policy, shared by both modes.

The scheduler (``gpuqueue.scheduler``) only decides; :class:`QueueShell` carries its decisions
out and settles attempts the same way for the embedded ``QueueService`` and the cluster's
``Daemon``. What differs between the two is only *how*: where a record and its events are
written (SQLite, or Redis with a fence), how an attempt is started (a local runner, or a message
to a node's Celery queue) and how it is asked to stop (SIGUSR1, or a control list). Those are the
five methods a shell implements:

* :meth:`QueueShell._find` -- a job's record, or None;
* :meth:`QueueShell._start_attempt` -- carry out a ``Start``;
* :meth:`QueueShell._request_stop` -- ask an attempt to stop (cancel, preempt, timeout);
* :meth:`QueueShell._event` -- append an event to a job's stream;
* :meth:`QueueShell._record_state` -- write a job's new state and its ``state`` event at once;

plus :meth:`QueueShell._attempt_report`, what the attempt left behind (results, error record).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from ..observability.logs import job_fields
from ..scheduler.admission import never_runs
from ..scheduler.base import Decision, JobRequest, Preempt, Retry, Scheduler, Start, TimeOut, Warn
from .config import QueueConfig
from .lifecycle import attempt_outcome, clean_exit_record, job_request, settle
from .models import JobRecord
from .states import JobState, Outcome

log = logging.getLogger("gpuqueue.shell")

Listener = Callable[[str, dict[str, Any]], None]
"""``fn(what, data)``: "submitted", "state" {job, old, new}, "started", "pass" {seconds},
"event" {job, type, data}, "attempt_ended" {job, outcome} (metrics and the widgets listen)."""


class AttemptReport(NamedTuple):
    """What an ended attempt left besides its exit record."""

    has_result: bool  # a cell job stored its results
    error: Optional[dict[str, Any]]  # the job's error record (type, message, traceback)
    result: Optional[dict[str, Any]]  # the result record (names, unreturnable)
    result_bytes: int = 0  # size of the stored results


class QueueShell:
    """Carries out a scheduler's decisions and settles attempts; see the module docstring."""

    scheduler: Scheduler
    config: QueueConfig
    listeners: list[Listener]
    stop_grace_s: float  # what a job gets between SIGTERM and SIGKILL when it times out
    # whether the config's pools list every node they will have (embedded: yes; a cluster
    # scheduler without --config: no, its pools are the workers that joined), so that a waiting
    # job too big for them is told so at a rebuild
    nodes_known: bool = True

    # -- what each shell implements --------------------------------------------------------
    def _find(self, job_id: str) -> Optional[JobRecord]:
        """The job's current record, or None if the store has none."""
        raise NotImplementedError

    def _start_attempt(self, job_id: str, placement: dict[str, tuple[int, ...]]) -> None:
        """Start the job's next attempt on ``placement`` (node -> GPU indexes)."""
        raise NotImplementedError

    def _request_stop(self, job: JobRecord, reason: str, grace_s: float, message: str = "") -> None:
        """Ask the current attempt to stop (``reason``: cancelled, preempted, timed_out), with
        ``message`` as a warning event for the user."""
        raise NotImplementedError

    def _event(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        """Append one event to the job's stream."""
        raise NotImplementedError

    def _record_state(self, job: JobRecord, data: dict[str, Any], extra: Sequence[Any]) -> None:
        """Write ``job`` (its state already changed) with the ``state`` event ``data``; ``extra``
        are store writes that must happen with it (the cluster's fence)."""
        raise NotImplementedError

    def _attempt_report(self, job: JobRecord, exit_record: dict[str, Any]) -> AttemptReport:
        """What the current attempt left: results stored, error and result records."""
        raise NotImplementedError

    def _attempt_settled(self, job: JobRecord, state: JobState) -> Sequence[Any]:
        """Called as an attempt is settled, before its new state is written; returns the store
        writes to make with it (see :meth:`_record_state`). Nothing by default."""
        return ()

    # -- carrying out decisions ------------------------------------------------------------
    def carry_out(self, decisions: Sequence[Decision]) -> None:
        """Carry out a pass's decisions: start attempts, stop preempted and timed-out ones, warn."""
        for d in decisions:
            if isinstance(d, Start):
                self._start_attempt(d.job_id, d.placement)
            elif isinstance(d, Preempt):
                job = self._find(d.job_id)
                if job is not None:
                    self._request_stop(job, "preempted", d.grace_s, f"preempted: {d.reason}")
            elif isinstance(d, TimeOut):
                job = self._find(d.job_id)
                if job is not None:
                    self._request_stop(job, "timed_out", self.stop_grace_s)
            elif isinstance(d, Warn):
                self._event(d.job_id, "warning", {"message": d.message})

    def tick(self) -> None:
        """One scheduling pass: ask the scheduler, carry out what it decides, tell listeners."""
        t0 = time.perf_counter()
        self.carry_out(self.scheduler.tick(time.time()))
        self._notify("pass", {"seconds": time.perf_counter() - t0})

    # -- state changes and settling --------------------------------------------------------
    def _requeue(self, job: JobRecord, req: JobRequest, now: float) -> bool:
        """Give a waiting job back to the scheduler (a rebuild, a lost attempt). One that can
        never run under the config as it is now (``admission.never_runs``: its pool left the
        config, or was never in it: a job queued before the first scheduler ran; it no longer
        fits the pool's nodes, time limit or GPU caps) fails, saying why, instead of waiting for
        ever. Limits that change with time are not checked again. True if queued."""
        why = never_runs(req, self.config, self.nodes_known)
        if why is None:
            rej = self.scheduler.submit(req, now, restoring=True)
            if rej is None:
                return True
            why = rej.reason
        self._unqueueable(job, why)
        return False

    def _unqueueable(self, job: JobRecord, why: str) -> None:
        """Fail a waiting job the queue's config cannot take (``why``), saying so."""
        job.error = f"cannot be queued with the queue's config: {why}; submit it again"
        self._set_state(job, JobState.FAILED, error=job.error)

    def _set_state(self, job: JobRecord, state: JobState, extra: Sequence[Any] = (), **info: Any) -> None:
        """Move ``job`` to ``state``: the record, a ``state`` event with ``info`` (None values
        left out) and the "state" notification."""
        old = job.state
        job.state = state
        data: dict[str, Any] = {"state": state.value}
        data.update({k: v for k, v in info.items() if v is not None})
        self._record_state(job, data, extra)
        self._notify("state", {"job": job, "old": old.value, "new": state.value})

    def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any],
                     decisions: Optional[list[Decision]] = None) -> None:
        """Settle the current attempt from its exit record: its outcome, the scheduler told
        (``finished``), the job's next state. ``decisions`` are given when the scheduler already
        decided (a lost node's ``Retry``); then a job that was being cancelled or timed out is
        dropped instead, as the user's (or the limit's) word stands. Idempotent."""
        a = job.current_attempt
        if a is None or a.outcome is not None:
            return
        now = time.time()
        exit_record = clean_exit_record(exit_record)
        report = self._attempt_report(job, exit_record)
        outcome = attempt_outcome(job, exit_record, report.has_result, self.config.max_lost_attempts)
        if decisions is None:
            decisions = self.scheduler.finished(job.id, outcome, now)
        elif outcome not in (Outcome.LOST, Outcome.PREEMPTED):
            self.scheduler.cancel(job.id, now)
            decisions = []
        never = self._never_again(job, decisions, now)
        if never is not None:
            decisions = [d for d in decisions if not (isinstance(d, Retry) and d.job_id == job.id)]
        state, info = settle(job, outcome, exit_record, decisions, now, report.error, report.result)
        if state == JobState.SUCCEEDED:
            job.result_bytes = report.result_bytes if report.has_result else 0
        if never is not None and state == JobState.FAILED:
            was = (f" (attempt {a.number}: {job.error})" if outcome == Outcome.FAILED and job.error
                   else f" (attempt {a.number} was {outcome.value})")
            job.error = info["error"] = f"cannot be queued again with the queue's config: {never}; submit it again{was}"
        extra = self._attempt_settled(job, state)
        self._set_state(job, state, extra=extra, **info)
        log.info("job %s: attempt %s ended %s; job %s", job.id, a.number, outcome.value, job.state.value,
                 extra=job_fields(job))
        self._notify("attempt_ended", {"job": job, "outcome": outcome.value})

    def _never_again(self, job: JobRecord, decisions: list[Decision], now: float) -> Optional[str]:
        """Why the retry the scheduler decided for ``job`` can never run under the config as it
        is now (a job that was running when the admin shrank its pool), or None. The scheduler
        has forgotten the job then: it fails instead of waiting for ever (as at a rebuild:
        :meth:`_requeue`)."""
        if not any(isinstance(d, Retry) and d.job_id == job.id for d in decisions):
            return None
        why = never_runs(job_request(job, self.config), self.config, self.nodes_known)
        if why is not None:
            self.scheduler.cancel(job.id, now)
        return why

    def _notify(self, what: str, data: Any) -> None:
        """Tell every listener; a record alone is sent as ``{"job": record}``. A listener that
        fails is logged and never breaks the queue."""
        for fn in self.listeners:
            try:
                fn(what, data if isinstance(data, dict) else {"job": data})
            except Exception:  # noqa: BLE001 - observers must never break the queue
                log.exception("listener failed on %s", what)
