"""The embedded queue: scheduler + local executor + SQLite store, in one asyncio service.

This is the one manager object the Jupyter server extension holds (handlers delegate every verb
to it). It runs the scheduling loop, launches each attempt through ``gpuqueue.attempt.runner`` (a
process in its own session that outlives this one), copies each attempt's ``events.jsonl`` into
the store, and turns exits into state changes. On start it rebuilds the scheduler from the store
and re-adopts running attempts, so a server restart loses nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Sequence

from ..observability import gpumap
from ..queue.config import QueueConfig, single_node_config
from ..queue.durations import KEEP_FINISHED, format_duration, parse_retention
from ..queue import bounds
from ..queue.errors import Conflict, Forbidden, Gone, NotFound, Rejected
from ..attempt.jobdir import (MALFORMED, attempt_dir, job_dir, read_events, read_job_record, write_bytes_atomic,
                              write_json_atomic)
from ..attempt.launch import build_launch, runner_env
from ..attempt.warmjob import warm_spec
from ..queue.lifecycle import decode_payload, job_request, results_for_owner_only, same_cell_job, with_defaults
from ..observability.logs import job_fields
from ..queue.models import Attempt, Buffer, Event, JobRecord, JobSpec, SubmitRequest, new_job_id
from ..queue.ratelimit import MemoryBuckets, SubmitLimiter
from ..scheduler import make_scheduler
from ..scheduler.admission import inadmissible
from ..scheduler.base import Decision, JobRequest
from ..queue.states import ACTIVE_STATES, LIVE_STATES, WAITING_STATES, JobState
from ..queue.shell import AttemptReport, Listener, QueueShell
from ..queue.verbs import Caller
from .store import SqliteStore

log = logging.getLogger("gpuqueue.service")

TAIL_INTERVAL_S = 0.01  # while attempts run: how often their event files are looked at (a stat each)
TAIL_RETRY_FIRST_S = 0.1  # a tail round that raised is tried again after this long ...
TAIL_RETRY_MAX_S = 10.0  # ... doubled at each failure in a row, up to this
IDLE_TAIL_S = 5.0  # while none runs: the tail loop sleeps this long, or until an attempt starts
TICK_INTERVAL_S = 1.0  # a scheduling pass at least this often (more on submit/finish)
STATE_SAVE_INTERVAL_S = 30.0
EXPIRE_EVERY_S = 60.0  # how often finished jobs past keep_finished are looked for
EXPIRE_BATCH = 500  # at most this many deleted a round
PRUNE_CHUNK = 5000  # dropped output rows deleted at a time (about 6 ms of SQLite)


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


class QueueService(QueueShell):
    """Embedded-mode queue manager. Every public method is called on the event loop thread.
    Decisions are carried out and attempts settled by :class:`QueueShell`; this class starts
    attempts as local runners and keeps records in SQLite."""

    def __init__(
        self,
        state_dir: str | Path,
        config: Optional[QueueConfig] = None,
        gpus: int = 0,
        policy: str = "gpuqueue",
        stop_grace_s: float = 10.0,
        max_payload_bytes: int = 200 * 1024 * 1024,
        keep_finished: Optional[float] = parse_retention(KEEP_FINISHED),
    ):
        self.state_dir = Path(state_dir)
        self.keep_finished = keep_finished  # seconds a finished job is kept (None: forever)
        self.config = config or single_node_config(gpus)
        self.limiter = SubmitLimiter(MemoryBuckets())  # per-user submit buckets (submit_rate)
        self.policy = policy
        self.stop_grace_s = stop_grace_s
        self.max_payload_bytes = max_payload_bytes
        self.devices = self._device_map(self.config)
        self.store: Optional[SqliteStore] = None
        self.scheduler: Any = None
        self.listeners: list[Listener] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # runners we started (to reap)
        self._warm: Optional[subprocess.Popen[bytes]] = None  # the next launch's runner
        self._last_python: Optional[str] = None  # the interpreter of the last cell job
        self._warm_primed = False  # the warm runner was sent a warm_spec (its job interpreter runs)
        # a warm runner is kept only once this server's queue is used (a submit, or live jobs
        # found at start): a server whose user never submits starts no interpreter
        self._warm_wanted = False
        self._sizes: dict[str, tuple[Path, int]] = {}  # active job -> (events file, size seen)
        self._to_prune: dict[str, None] = {}  # jobs whose dropped output is still in the store, in order
        self._prune_wake = asyncio.Event()
        self._inputs_pending: dict[str, int] = {}  # owner -> payload bytes of submits being written
        self._wake = asyncio.Event()
        self._tail_wake = asyncio.Event()  # set when an attempt starts (or a runner is to reap)
        self._changed: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._lock_file: Any = None
        self._last_state_save = 0.0
        self._last_liveness = 0.0

    @staticmethod
    def _device_map(config: QueueConfig) -> dict[str, list[int]]:
        """Each configured node's GPU indices mapped onto this machine's devices, in order."""
        out: dict[str, list[int]] = {}
        offset = 0
        for pool in config.pools.values():
            for node, count in pool.nodes.items():
                out[node] = list(range(offset, offset + count))
                offset += count
        return out

    # -- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, rebuild the scheduler, re-adopt running jobs, start the loops."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.state_dir / "queue.lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another Jupyter server already runs the queue in {self.state_dir}; "
                f"stop it, or give this one its own GPUQUEUE_STATE_DIR"
            ) from None
        self._warn_missing_warm_imports()
        self.store = SqliteStore(self.state_dir / "queue.sqlite")
        self.scheduler = make_scheduler(self.config, self.policy)
        saved = self.store.get_meta("scheduler_state")
        if saved:
            self.scheduler.import_state(saved)
        self._restore()
        self._to_prune.update(dict.fromkeys(self.store.logs_left_to_drop(bounds.DROPPED_LOG_TYPES)))
        self._tasks = [
            asyncio.create_task(self._schedule_loop()),
            asyncio.create_task(self._tail_loop()),
            asyncio.create_task(self._prune_loop()),
        ]
        if self.keep_finished is not None:
            self._tasks.append(asyncio.create_task(self._expire_loop(self.keep_finished)))

    def _warn_missing_warm_imports(self) -> None:
        """Name the modules of a ``warm_imports`` the config sets that this server's Python
        cannot find: a module that is not installed is skipped, so a misspelt name made every
        cell job start cold without a word (the default's ``torch`` is skipped quietly)."""
        if "warm_imports" not in self.config.model_fields_set:
            return
        missing = [m for m in self.config.warm_imports if importlib.util.find_spec(m.split(".")[0]) is None]
        if missing:
            log.warning("warm_imports: %s not installed for %s: cell jobs are started without %s; "
                        "fix the name%s in the queue config, or install %s", ", ".join(map(repr, missing)),
                        sys.executable, "it" if len(missing) == 1 else "them", "" if len(missing) == 1 else "s",
                        "it" if len(missing) == 1 else "them")

    async def stop(self) -> None:
        """Stop the loops. Running jobs go on: the next start re-adopts them."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        self._retire_warm_runner(wait=True)
        if self.store is not None:
            self._tail_all()
            self._save_scheduler_state(force=True)
            self.store.close()
            self.store = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _restore(self) -> None:
        assert self.store is not None
        now = time.time()
        for job in sorted(self.store.list(states=LIVE_STATES, limit=1_000_000), key=lambda j: j.created_at):
            self._warm_wanted = True
            if job.state in WAITING_STATES:
                self._requeue(job, self._request(job), now)
                continue
            a = job.current_attempt
            assert a is not None
            placement = {n: tuple(ids) for n, ids in a.placement.items()}
            try:
                self.scheduler.restore_running(self._request(job), placement, a.started_at)
            except (RuntimeError, KeyError) as e:
                log.warning("job %s: cannot restore its placement (%s); treating as lost", job.id, e,
                            extra=job_fields(job))
            if not self._runner_alive(a):
                self._tail_job(job)  # copy what it wrote before it ended, then settle it
                job = self._get(job.id)
                if not job.state.is_terminal and job.current_attempt and job.current_attempt.outcome is None:
                    self._end_attempt(job, self._read_exit(job))
            else:
                self._sizes[job.id] = (self._events_path(job.id, a.number), -1)
                log.info("job %s: re-adopted running attempt %s (pid %s)", job.id, a.number, a.pid,
                         extra=job_fields(job))

    # -- user verbs -------------------------------------------------------------------------
    async def submit(self, caller: Caller, req: SubmitRequest) -> tuple[JobRecord, bool]:
        """Queue a job (or find the same cell's active job). Returns (job, attached).
        The payload is written in a thread, before the scheduler hears of the job."""
        assert self.store is not None
        attached = same_cell_job(req, self._iter_live(caller.name))
        if attached is not None:
            return self._with_pending(attached), True
        payload = decode_payload(req, self.max_payload_bytes)
        spec = self._with_defaults(req.spec)
        job = JobRecord(id=new_job_id(), owner=caller.name, spec=spec,
                        group=self.config.group_of(caller.name, caller.hub_groups) or "")
        why = inadmissible(self._request(job), self.config)
        if why:  # a job that can never run here: 400 before its payload is written or a token taken
            raise Rejected(why)
        nbytes = len(payload) if payload is not None else 0
        self._check_inputs(caller.name, nbytes)
        # given back if refused below
        self.limiter.check(caller.name, caller.admin, self.config, caller.hub_groups)
        self._inputs_pending[caller.name] = self._inputs_pending.get(caller.name, 0) + nbytes
        try:
            return await self._submit_job(caller, req, job, spec, payload)
        finally:
            left = self._inputs_pending.pop(caller.name) - nbytes
            if left:
                self._inputs_pending[caller.name] = left

    def _check_inputs(self, owner: str, nbytes: int) -> None:
        """Refuse a cell whose inputs (``nbytes``) would bring the payloads the owner's unfinished
        jobs keep in the state folder over ``max_inputs_mb`` (as the cluster's API does)."""
        if not nbytes:
            return
        limit = self.config.limits_for(owner).max_inputs_mb
        held = self._inputs_pending.get(owner, 0) + sum(
            _size(job_dir(self.state_dir, j.id) / "payload.pkl") for j in self._iter_live(owner))
        if held + nbytes > limit * bounds.MB:
            raise Rejected(bounds.inputs_over_limit(held, nbytes, limit))

    async def _submit_job(self, caller: Caller, req: SubmitRequest, job: JobRecord, spec: JobSpec,
                          payload: Optional[Buffer]) -> tuple[JobRecord, bool]:
        """The rest of :meth:`submit`, once the job may be taken: its files written off the loop,
        then the scheduler and the store told."""
        assert self.store is not None
        d = job_dir(self.state_dir, job.id)
        await asyncio.to_thread(self._write_job_files, d, spec, payload)
        attached = same_cell_job(req, self._iter_live(caller.name))
        rejected = None if attached else self.scheduler.submit(self._request(job), time.time())
        if attached or rejected:
            shutil.rmtree(d, ignore_errors=True)  # the same cell was submitted meanwhile, or refused
            # neither costs a token
            self.limiter.refund(caller.name, caller.admin, self.config, caller.hub_groups)
            if rejected:  # depth limits, quotas (the scheduler decides)
                raise Rejected(rejected.reason)
            assert attached is not None
            return self._with_pending(attached), True
        try:
            self.store.put(job)
        except Exception:
            self.scheduler.cancel(job.id, time.time())
            raise
        self._event(job.id, "state", {"state": "queued"})
        self._notify("submitted", job)
        self._warm_wanted = True  # from now on the next cell's runner is kept warm
        self._wake.set()
        return self._with_pending(job), False

    def _iter_live(self, owner: str) -> Iterator[JobRecord]:
        """The owner's live jobs, read from the store only once iterated."""
        assert self.store is not None
        yield from self.store.list(owner=owner, states=LIVE_STATES, limit=10_000)

    @staticmethod
    def _write_job_files(d: Path, spec: JobSpec, payload: Optional[Buffer]) -> None:
        d.mkdir(parents=True)
        write_json_atomic(d / "spec.json", spec.model_dump(mode="json"))
        if payload is not None:
            write_bytes_atomic(d / "payload.pkl", payload)

    def _with_defaults(self, spec: JobSpec) -> JobSpec:
        return with_defaults(spec, self.config)

    def list_jobs(self, caller: Caller, all_users: bool = False, limit: int = 500) -> list[JobRecord]:
        """The caller's jobs (an admin's ``all_users`` lists everyone's), newest first."""
        assert self.store is not None
        owner = None if (all_users and caller.admin) else caller.name
        return [self._with_pending(j) for j in self.store.list(owner=owner, limit=limit)]

    def get_job(self, caller: Caller, job_id: str) -> JobRecord:
        """One job the caller may see; NotFound otherwise (never says it exists)."""
        job = self.store.get(job_id) if self.store else None
        if job is None or (job.owner != caller.name and not caller.admin):
            raise NotFound(f"no job {job_id!r} (see `gpuqueue ls` for yours)")
        return self._with_pending(job)

    def cancel(self, caller: Caller, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or ask a running one to stop (grace, then kill)."""
        job = self.get_job(caller, job_id)
        if job.state.is_terminal:
            return job
        if job.state in (JobState.STARTING, JobState.RUNNING):
            self._request_stop(job, "cancelled", self.stop_grace_s)
            return self._with_pending(self._get(job_id))
        self.scheduler.cancel(job.id, time.time())
        self._set_state(job, JobState.CANCELLED, note=f"cancelled by {caller.name}")
        return job

    def preempt(self, caller: Caller, job_id: str) -> JobRecord:
        """Admin: preempt a running job now (it checkpoints, stops and is queued again)."""
        if not caller.admin:
            raise Forbidden("only admins may preempt jobs")
        job = self.get_job(caller, job_id)
        if job.state not in (JobState.STARTING, JobState.RUNNING):
            raise Conflict(f"job {job_id} is {job.state.value}, not running: nothing to preempt")
        self._request_stop(job, "preempted", self.stop_grace_s)
        return self._get(job_id)

    def events(self, caller: Caller, job_id: str, after: int = 0, limit: int = 10_000) -> list[Event]:
        """The job's events with seq > ``after`` (for a job whose logs were dropped, without its
        output records, and read from the start, the notice that says so)."""
        job = self.get_job(caller, job_id)
        assert self.store is not None
        return bounds.visible_events(job, self.store.read_events(job_id, after, limit), after == 0)

    async def follow(self, caller: Caller, job_id: str, after: int = 0, keepalive_s: float = 15.0) -> AsyncIterator[Optional[Event]]:
        """Replay events after ``after``, then yield new ones live until the job ends.
        Yields None as a keep-alive when nothing happened for ``keepalive_s``."""
        job0 = self.get_job(caller, job_id)
        from_start = after == 0
        while True:
            assert self.store is not None
            batch = self.store.read_events(job_id, after, 2000)
            for ev in bounds.visible_events(job0, batch, from_start):
                yield ev
            from_start = False
            if batch:
                after = batch[-1].seq
                continue
            job = self._get(job_id)
            if job.state.is_terminal:
                return
            ev_flag = self._changed.setdefault(job_id, asyncio.Event())
            ev_flag.clear()
            if self.store.last_seq(job_id) > after:
                continue
            if not await wait_set(ev_flag, keepalive_s):
                yield None

    def result(self, caller: Caller, job_id: str) -> bytes:
        """The pickled names a succeeded cell job assigned."""
        job = self.get_job(caller, job_id)
        results_for_owner_only(caller.name, job)
        if job.state != JobState.SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.state.value}: results come once it has succeeded")
        if job.result_dropped:
            raise Gone(f"job {job_id}: {job.result_dropped}")
        a = job.current_attempt
        path = attempt_dir(self.state_dir, job_id, a.number if a else 0) / "result.pkl"
        if not path.exists():
            raise NotFound(f"job {job_id} has no stored results (a command job returns none)")
        return path.read_bytes()

    def summary(self, caller: Caller) -> dict[str, Any]:
        """Pools with GPUs used/free and queue lengths, and the caller's own job counts."""
        assert self.store is not None
        snap = self.scheduler.snapshot()
        mine: dict[str, int] = {}
        for j in self.store.list(owner=caller.name, states=LIVE_STATES, limit=100_000):
            mine[j.state.value] = mine.get(j.state.value, 0) + 1
        out = {"mode": "embedded", "pools": snap.get("pools", {}), "me": {"user": caller.name, "admin": caller.admin, "jobs": mine}}
        if "users" in snap:
            out["users"] = snap["users"]
        out.update(gpumap.embedded_view(self, snap, caller))
        return out

    # -- the loops --------------------------------------------------------------------------
    async def _schedule_loop(self) -> None:
        while True:
            await wait_set(self._wake, self._until_next_pass())
            self._wake.clear()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad pass must not stop the queue
                log.exception("scheduling pass failed")

    def _until_next_pass(self) -> float:
        """Seconds to sleep before the next pass: at most TICK_INTERVAL_S, less when the
        scheduler says it has work sooner (a timeout, a boost, a retry coming due)."""
        when = self.scheduler.next_wakeup()
        if when is None:
            return TICK_INTERVAL_S
        return min(TICK_INTERVAL_S, max(0.01, when - time.time()))  # never a busy loop

    def tick(self) -> None:
        """One scheduling pass (:meth:`QueueShell.tick`), then a warm runner made ready for the
        next launch and the scheduler's state saved now and then."""
        super().tick()
        self._keep_runner_warm()
        self._save_scheduler_state()

    def _save_scheduler_state(self, force: bool = False) -> None:
        if self.store is None:
            return
        now = time.monotonic()
        if force or now - self._last_state_save > STATE_SAVE_INTERVAL_S:
            self._last_state_save = now
            self.store.set_meta("scheduler_state", self.scheduler.export_state())

    async def _tail_loop(self) -> None:
        """Tail active attempts every TAIL_INTERVAL_S (live logs); while none is active and no
        runner is left to reap, sleep until one starts (at most IDLE_TAIL_S). A round that
        raises is tried again after a delay that doubles at each failure in a row
        (TAIL_RETRY_FIRST_S to TAIL_RETRY_MAX_S, as a cluster worker's), each distinct error
        logged once: a store that kept failing logged a traceback every round."""
        failing = _Failing()
        while True:
            try:
                self._tail_all()
            except Exception as e:  # noqa: BLE001
                await asyncio.sleep(failing.seen(e))
                continue
            failing.over()
            if self._sizes or self._procs:
                await asyncio.sleep(TAIL_INTERVAL_S)
                continue
            self._tail_wake.clear()
            await wait_set(self._tail_wake, IDLE_TAIL_S)

    async def _prune_loop(self) -> None:
        """Delete the output records of the jobs whose logs were dropped (``_to_prune``), a chunk
        of PRUNE_CHUNK rows at a time (a few ms each), letting the event loop run between them."""
        while True:
            await wait_set(self._prune_wake, IDLE_TAIL_S)
            self._prune_wake.clear()
            while self._to_prune and self.store is not None:
                job_id = next(iter(self._to_prune))
                try:
                    if self.store.delete_events_chunk(job_id, bounds.DROPPED_LOG_TYPES, PRUNE_CHUNK) < PRUNE_CHUNK:
                        del self._to_prune[job_id]
                except Exception:  # noqa: BLE001 - the next round tries again
                    log.exception("deleting the dropped output of job %s failed", job_id)
                    break
                await asyncio.sleep(0)

    async def _expire_loop(self, keep_s: float) -> None:
        """Every minute (sooner for a short ``keep_finished``): delete the finished jobs that
        ended over ``keep_s`` ago, records and folders (payload, logs, results, checkpoints)."""
        while True:
            await asyncio.sleep(min(EXPIRE_EVERY_S, keep_s / 4))
            try:
                await self.expire(keep_s)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("deleting old finished jobs failed")

    async def expire(self, keep_s: float) -> list[str]:
        """One round of :meth:`_expire_loop` (at most EXPIRE_BATCH jobs); the ids deleted."""
        assert self.store is not None
        gone = self.store.finished_before(time.time() - keep_s, EXPIRE_BATCH)
        if not gone:
            return []
        self.store.delete(gone)  # first: from now on the jobs do not exist for anyone
        for job_id in gone:
            self._changed.pop(job_id, None)
        folders = [job_dir(self.state_dir, j) for j in gone]
        await asyncio.to_thread(_remove_folders, folders)  # checkpoints may be large: off the loop
        log.info("deleted %d jobs that finished over %s ago: %s", len(gone), format_duration(keep_s),
                 ", ".join(gone[:20]) + (" ..." if len(gone) > 20 else ""))
        return gone

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

    # -- launching and ending attempts ------------------------------------------------------
    def _start_attempt(self, job_id: str, placement: dict[str, tuple[int, ...]]) -> None:
        """A ``Start``: write launch.json and hand its folder to a (warm) runner."""
        assert self.store is not None
        job = self._get(job_id)
        number = len(job.attempts) + 1
        node = next(iter(placement)) if placement else next(iter(self.devices), "local")
        devices = [self.devices[n][i] for n, ids in placement.items() for i in ids]
        adir = attempt_dir(self.state_dir, job_id, number)
        adir.mkdir(parents=True, exist_ok=True)
        launch = build_launch(job_id, job.spec, job_dir(self.state_dir, job_id), adir, number, devices, node)
        if job.spec.kind == "cell" and job.spec.python and job.spec.python != (self._last_python or sys.executable):
            self._last_python = job.spec.python  # the warm runner started for another: start anew
            self._retire_warm_runner()
        write_json_atomic(adir / "launch.json", launch)
        attempt = Attempt(
            number=number,
            node=node,
            gpu_ids=devices,
            placement={n: list(ids) for n, ids in placement.items()},
            started_at=time.time(),
        )
        job.attempts.append(attempt)
        job.state = JobState.STARTING
        self.store.put(job)
        self._event(job_id, "state", {"state": "starting", "attempt": number, "node": node, "gpus": devices})
        try:
            proc = self._take_runner()
            assert proc.stdin is not None
            proc.stdin.write(str(adir).encode() + b"\n")  # go: it reads launch.json now
            proc.stdin.close()
        except (OSError, ValueError) as e:
            self._end_attempt(job, {"exit_code": 127, "stop_reason": None, "error": f"cannot start the runner: {e}"})
            return
        self._procs[proc.pid] = proc
        self._sizes[job_id] = (adir / "events.jsonl", -1)
        self._tail_wake.set()  # the tail loop polls fast from now on
        log.info("job %s: attempt %s launched on %s GPUs %s", job_id, number, node, devices, extra=job_fields(job))
        attempt.pid = proc.pid
        attempt.pid_started = _process_start_time(proc.pid)
        self.store.put(job)

    def _take_runner(self) -> subprocess.Popen[bytes]:
        """The warm runner (started ahead of time) if it is alive, else a new one."""
        proc = self._warm
        self._warm = None
        if proc is None or proc.poll() is not None:
            proc = self._new_runner()
        return proc

    def _new_runner(self) -> subprocess.Popen[bytes]:
        """A runner in its own session (it outlives this server), waiting on stdin. Once primed
        it starts the next cell job's interpreter ahead (``gpuqueue.attempt.warmjob``)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuqueue.attempt.runner", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=runner_env(),
        )
        self._warm_primed = False
        return proc

    def _prime_warm_runner(self) -> None:
        """Have the warm runner start the next cell job's interpreter now (its imports take CPU
        time: only while no job runs, so that they never slow one down)."""
        proc = self._warm
        if proc is None or self._warm_primed or self.store is None:
            return
        if self._sizes:  # an attempt is active (known in memory: no store query per pass)
            return
        self._warm_primed = True
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(self._warm_spec()).encode() + b"\n")
            proc.stdin.flush()
        except (OSError, ValueError) as e:  # its job starts cold
            log.warning("cannot prepare a warm job interpreter: %s", e)

    def _warm_spec(self) -> dict[str, Any]:
        """What the next cell job's interpreter is started with: the interpreter of the last
        cell job (the kernel's), the environment ``build_launch`` gives a cell job here."""
        spec = JobSpec(kind="cell", python=self._last_python or sys.executable)
        jd = self.state_dir / "jobs" / "next"
        env = build_launch("next", spec, jd, jd / "1", 1, [], "local")["env"]
        return warm_spec(spec.python or sys.executable, env, self.config.warm_imports)

    def _retire_warm_runner(self, wait: bool = False) -> None:
        """End the warm runner (EOF: it exits without running anything, its job interpreter too)."""
        proc, self._warm = self._warm, None
        if proc is None:
            return
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        if not wait:
            self._procs[proc.pid] = proc  # reaped by the tail loop
            self._tail_wake.set()
            return
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()

    def _keep_runner_warm(self) -> None:
        """Have a runner (and, once primed, a job interpreter) ready for the next launch, from
        the server's first submit on."""
        if not self._warm_wanted:
            return
        if self._warm is None or self._warm.poll() is not None:
            try:
                self._warm = self._new_runner()
            except OSError as e:
                log.warning("cannot start a warm runner: %s", e)
        self._prime_warm_runner()

    def _request_stop(self, job: JobRecord, reason: str, grace_s: float, message: str = "") -> None:
        """control.json and SIGUSR1 to the runner (it sends SIGTERM, SIGKILL after the grace)."""
        self._stop_runner(job, reason, grace_s)
        if message:
            self._event(job.id, "warning", {"message": message})

    def _stop_runner(self, job: JobRecord, reason: str, grace_s: float) -> None:
        assert self.store is not None
        a = job.current_attempt
        if a is None or a.stop_requested:
            return
        a.stop_requested = reason
        self.store.put(job)
        write_json_atomic(
            attempt_dir(self.state_dir, job.id, a.number) / "control.json",
            {"reason": reason, "grace_s": grace_s, "time": time.time()},
        )
        if a.pid and self._runner_alive(a):
            try:
                os.kill(a.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        self._event(job.id, "info", {"message": f"stopping ({reason}); grace {grace_s:.0f}s"})

    def _read_exit(self, job: JobRecord) -> dict[str, Any]:
        a = job.current_attempt
        # the runner's, but the job runs as this process's user and may have written it
        rec = read_job_record(attempt_dir(self.state_dir, job.id, a.number), "exit.json") if a else None
        if isinstance(rec, dict) and MALFORMED in rec:
            return {"exit_code": None, "stop_reason": None, "lost": True,
                    "error": f"its exit record (exit.json) is malformed ({rec[MALFORMED]})"}
        return rec or {"exit_code": None, "stop_reason": None, "lost": True}

    def _attempt_report(self, job: JobRecord, exit_record: dict[str, Any]) -> AttemptReport:
        """The attempt folder's result.pkl, error.json and result.json."""
        a = job.current_attempt
        assert a is not None
        adir = attempt_dir(self.state_dir, job.id, a.number)
        try:
            size: Optional[int] = (adir / "result.pkl").stat().st_size
        except OSError:
            size = None
        # the job wrote them, so they may hold anything: read_job_record never raises for it
        return AttemptReport(size is not None, read_job_record(adir, "error.json"), read_job_record(adir, "result.json"),
                             size or 0)

    def _attempt_settled(self, job: JobRecord, state: JobState) -> Sequence[Any]:
        """A succeeded job's results join its owner's, within ``max_results_mb``: the owner's
        oldest go first (each such job's record says so); results over the whole limit are not
        kept (``job`` says so). A job that ended otherwise has none to give: what its attempt
        stored goes."""
        assert self.store is not None
        if state.is_terminal:
            self._keep_logs_within(job)
        if state.is_terminal and state != JobState.SUCCEEDED:
            self._remove_result(job)
        if state != JobState.SUCCEEDED or not job.result_bytes:
            return ()
        verdict = self._keep_within(bounds.RESULTS, job, job.result_bytes, self.store.kept_results)
        if not verdict.kept:
            job.result_dropped = verdict.too_big
            self._remove_result(job)
        for old in self._mark_older(verdict, "result_dropped"):
            self._remove_result(old)
        return ()

    def _keep_logs_within(self, job: JobRecord) -> None:
        """``job``'s output (what its attempts wrote to their events.jsonl, copied into the
        store) joins its owner's, within ``max_logs_mb``: the owner's oldest finished jobs' output
        goes first (each such job's record says so); output over the whole limit is not kept
        (``job`` says so). Their state, checkpoint and result records stay."""
        assert self.store is not None
        job.log_bytes = sum(_size(self._events_path(job.id, a.number)) for a in job.attempts)
        verdict = self._keep_within(bounds.LOGS, job, job.log_bytes, self.store.kept_logs)
        if not verdict.kept:  # its output goes once its last state event is in (_record_state)
            job.logs_dropped = verdict.too_big
        for old in self._mark_older(verdict, "logs_dropped"):
            self._drop_logs(old)

    def _keep_within(self, bound: bounds.Bound, job: JobRecord, nbytes: int,
                     kept: Callable[[str, str], tuple[int, Iterator[tuple[str, int]]]]) -> bounds.Verdict:
        """What ``bounds.keep_within`` decides for ``job``'s ``nbytes`` in its owner's ``kept`` set."""
        limit = getattr(self.config.limits_for(job.owner), bound.knob)
        total, oldest = kept(job.owner, job.id)
        verdict = bounds.keep_within(bound, total, oldest, nbytes, limit)
        line = verdict.log_line(bound, job.owner, limit)
        if line:
            log.info(line)
        return verdict

    def _mark_older(self, verdict: bounds.Verdict, field: str) -> list[JobRecord]:
        """The older jobs ``verdict`` drops, their records saying why in ``field``."""
        assert self.store is not None
        marked = []
        for job_id, _, why in verdict.drop:
            old = self.store.get(job_id)
            if old is not None:
                setattr(old, field, why)
                self.store.put(old, touch=False)  # its retention still counts from its end
                marked.append(old)
        return marked

    def _drop_logs(self, job: JobRecord) -> None:
        """Delete a finished job's attempts' events.jsonl, and its output records from the store
        a chunk at a time (:meth:`_prune_loop`); readers already leave them out
        (``bounds.visible_events``)."""
        self._to_prune[job.id] = None
        self._prune_wake.set()
        for a in job.attempts:
            try:
                self._events_path(job.id, a.number).unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("cannot delete the output of job %s: %s", job.id, e)

    def _remove_result(self, job: JobRecord) -> None:
        a = job.current_attempt
        try:
            (attempt_dir(self.state_dir, job.id, a.number if a else 0) / "result.pkl").unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot delete the results of job %s: %s", job.id, e)

    def _keep_finished_within(self, owner: str) -> None:
        """Delete the owner's oldest finished jobs past ``max_finished`` (records first, then
        their folders off the event loop), as :meth:`expire` does."""
        assert self.store is not None
        cap = self.config.limits_for(owner).max_finished
        gone = self.store.oldest_finished(owner, cap, EXPIRE_BATCH)
        if not gone:
            return
        self.store.delete(gone)
        for job_id in gone:
            self._changed.pop(job_id, None)
        folders = [job_dir(self.state_dir, j) for j in gone]
        try:
            asyncio.get_running_loop().run_in_executor(None, _remove_folders, folders)
        except RuntimeError:  # no event loop (a rebuild at start): here
            _remove_folders(folders)
        log.info("user %s: deleted %d oldest finished jobs to keep within max_finished = %d", owner, len(gone), cap)

    def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any],
                     decisions: Optional[list[Decision]] = None) -> None:
        """Settle the attempt (:meth:`QueueShell._end_attempt`) and wake the loop: GPUs are free."""
        if job.current_attempt is None or job.current_attempt.outcome is not None:
            return
        super()._end_attempt(job, exit_record, decisions)
        self._sizes.pop(job.id, None)  # no longer active: the tail loop may go idle
        self._wake.set()

    # -- helpers ----------------------------------------------------------------------------
    def _request(self, job: JobRecord) -> JobRequest:
        return job_request(job, self.config)

    def _get(self, job_id: str) -> JobRecord:
        assert self.store is not None
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def _with_pending(self, job: JobRecord) -> JobRecord:
        if job.state in WAITING_STATES:
            ex = self.scheduler.explain(job.id, time.time())
            job.pending = ex.as_dict() if ex else None
        return job

    def _find(self, job_id: str) -> Optional[JobRecord]:
        assert self.store is not None
        return self.store.get(job_id)

    def _record_state(self, job: JobRecord, data: dict[str, Any], extra: Sequence[Any]) -> None:
        assert self.store is not None and not extra
        self.store.put(job)
        self._event(job.id, "state", data)
        if job.state.is_terminal:
            if job.logs_dropped:  # its own output was over max_logs_mb (_keep_logs_within)
                self._drop_logs(job)
            self._keep_finished_within(job.owner)

    def _event(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        assert self.store is not None
        self.store.append_events(job_id, [(time.time(), type_, data)])
        self._poke(job_id)

    def _poke(self, job_id: str) -> None:
        flag = self._changed.get(job_id)
        if flag is not None:
            flag.set()

    def _runner_alive(self, a: Attempt) -> bool:
        if not a.pid:
            return False
        proc = self._procs.get(a.pid)
        if proc is not None:
            return proc.poll() is None
        started = _process_start_time(a.pid)
        if started is None:
            return False
        return a.pid_started is None or abs(started - a.pid_started) < 1.0


class _Failing:
    """Rounds of the tail loop that raised, in a row: how long to wait before the next one, and
    each distinct error logged once (then how often it came, and when it is over)."""

    def __init__(self) -> None:
        self.count, self.repeats, self.error, self.since = 0, 0, "", 0.0

    def seen(self, e: Exception) -> float:
        """Note a failed round; the seconds to wait before the next."""
        if not self.count:
            self.since = time.monotonic()
        self.count += 1
        text = f"{type(e).__name__}: {e}"
        if text != self.error:
            if self.repeats:
                log.warning("reading job events: the error before came %d more times", self.repeats)
            log.error("reading job events failed: %s; tried again with a growing delay (up to %g s)", text,
                      TAIL_RETRY_MAX_S, exc_info=e)
            self.error, self.repeats = text, 0
        else:
            self.repeats += 1
        return min(TAIL_RETRY_FIRST_S * 2 ** min(self.count - 1, 16), TAIL_RETRY_MAX_S)

    def over(self) -> None:
        """A round went through: say so once after failures."""
        if self.count:
            log.info("job events are read again, after %d failed rounds in %.1f s (last: %s)", self.count,
                     time.monotonic() - self.since, self.error)
            self.count, self.repeats, self.error = 0, 0, ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _remove_folders(folders: list[Path]) -> None:
    """Delete job folders (what cannot be deleted is logged; the rest goes on)."""
    for d in folders:
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot delete the folder of an old finished job %s: %s", d, e)


def _process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or None if it is gone/zombie."""
    try:
        import psutil

        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except Exception:  # noqa: BLE001 - NoSuchProcess, AccessDenied, ImportError
        return None
