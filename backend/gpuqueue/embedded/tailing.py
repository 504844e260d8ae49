"""How the embedded queue follows its attempts: every TAIL_INTERVAL_S the event files of the
active attempts are looked at (a stat each) and their new complete lines copied into the store
(``events.jsonl`` -> SQLite, the offset with them, so a restarted server goes on where the last
one stopped); an attempt whose runner is gone is settled. A round that fails backs off."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..attempt.jobdir import attempt_dir, read_events
from ..observability.repeats import Repeats
from ..queue.models import Attempt, JobRecord
from ..queue.states import ACTIVE_STATES, JobState
from .store import SqliteStore

log = logging.getLogger("gpuqueue.service")

TAIL_INTERVAL_S = 0.01  # while attempts run: how often their event files are looked at (a stat each)
TAIL_RETRY_FIRST_S = 0.1  # a tail round that raised is tried again after this long ...
TAIL_RETRY_MAX_S = 10.0  # ... doubled at each failure in a row, up to this
IDLE_TAIL_S = 5.0  # while none runs: the tail loop sleeps this long, or until an attempt starts


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False). A cancel always
    ends the wait with CancelledError: Python 3.10-3.11's ``asyncio.wait_for`` returns normally
    when the event is set in the same loop turn as the cancel, and a loop built on it then goes
    on after ``stop()`` cancelled it (the server hung on SIGTERM while a job was launching)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


class Tailing:
    """The service's part that copies attempts' events into the store (a mixin of
    ``QueueService``, which sets the attributes below)."""

    store: Optional[SqliteStore]
    state_dir: Path
    scheduler: Any
    _sizes: dict[str, tuple[Path, int]]
    _procs: dict[int, subprocess.Popen[bytes]]
    _tail_wake: asyncio.Event
    _last_liveness: float

    if TYPE_CHECKING:
        def _get(self, job_id: str) -> JobRecord: ...

        def _runner_alive(self, a: Attempt) -> bool: ...

        def _read_exit(self, job: JobRecord) -> dict[str, Any]: ...

        def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any], decisions: Any = None) -> None: ...

        def _set_state(self, job: JobRecord, state: JobState, extra: Any = (), **info: Any) -> None: ...

        def _notify(self, what: str, data: Any) -> None: ...

        def _poke(self, job_id: str) -> None: ...

    async def _tail_loop(self) -> None:
        """Tail active attempts every TAIL_INTERVAL_S (live logs); while none is active and no
        runner is left to reap, sleep until one starts (at most IDLE_TAIL_S). A round that
        raises is tried again after a delay that doubles at each failure in a row
        (TAIL_RETRY_FIRST_S to TAIL_RETRY_MAX_S, as a cluster worker's), each distinct error
        logged once: a store that kept failing logged a traceback every round."""
        failing = Repeats(log, before="reading job events: the error before came %d more times")
        while True:
            try:
                self._tail_all()
            except Exception as e:  # noqa: BLE001
                text = f"{type(e).__name__}: {e}"
                failing.seen(text, logging.ERROR, exc_info=e, line=f"reading job events failed: {text}; tried again "
                             f"with a growing delay (up to {TAIL_RETRY_MAX_S:g} s)")
                await asyncio.sleep(failing.backoff(TAIL_RETRY_FIRST_S, TAIL_RETRY_MAX_S))
                continue
            failing.over("job events are read again", after=", after {rounds} failed rounds in {seconds:.1f} s "
                         "(last: {last})")
            if self._sizes or self._procs:
                await asyncio.sleep(TAIL_INTERVAL_S)
                continue
            self._tail_wake.clear()
            await wait_set(self._tail_wake, IDLE_TAIL_S)

    def _tail_all(self) -> None:
        """Copy what active attempts wrote. Every pass (TAIL_INTERVAL_S while one is active)
        only their event files' sizes are looked at (a stat each); the store is read at most once a
        second, with the liveness check."""
        assert self.store is not None
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]
        if time.monotonic() - self._last_liveness <= 1.0:
            for job_id, (path, seen) in list(self._sizes.items()):
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    continue
                if size != seen:
                    self._sizes[job_id] = (path, size)
                    job = self._get(job_id)
                    if job.state.is_active:
                        self._tail_job(job)
            return
        self._last_liveness = time.monotonic()
        sizes: dict[str, tuple[Path, int]] = {}
        for job in self.store.list(states=ACTIVE_STATES, limit=100_000):
            self._tail_job(job)
            job = self._get(job.id)
            a = job.current_attempt
            if job.state.is_active and a and a.outcome is None and not self._runner_alive(a):
                self._tail_job(job)
                job = self._get(job.id)
                a = job.current_attempt
                if job.state.is_active and a is not None and a.outcome is None:
                    self._end_attempt(job, self._read_exit(job))
            a = job.current_attempt
            if job.state.is_active and a is not None:
                sizes[job.id] = self._sizes.get(job.id, (self._events_path(job.id, a.number), -1))
        self._sizes = sizes

    def _events_path(self, job_id: str, attempt: int) -> Path:
        return attempt_dir(self.state_dir, job_id, attempt) / "events.jsonl"

    def _tail_job(self, job: JobRecord) -> None:
        """Copy new complete lines of the current attempt's events.jsonl into the store."""
        assert self.store is not None
        a = job.current_attempt
        if a is None:
            return
        offset = self.store.tail_offset(job.id, a.number)
        batch = read_events(self._events_path(job.id, a.number), offset)
        if not batch.complete_line:
            return
        now = time.time()
        events = [(now if t is None else float(t), type_, d) for t, type_, d in batch.events]
        exit_record = batch.exit
        started = batch.runner is not None
        if started and job.state == JobState.STARTING:
            self._set_state(job, JobState.RUNNING, node=a.node, gpus=a.gpu_ids)
            self.scheduler.started(job.id, time.time())
            self._notify("started", job)
        self.store.append_events(job.id, events, tail=(a.number, batch.offset))
        self._poke(job.id)
        for type_, payload in ((e[1], e[2]) for e in events):
            self._notify("event", {"job": job, "type": type_, "data": payload})
        if exit_record is not None:
            self._end_attempt(self._get(job.id), exit_record)
