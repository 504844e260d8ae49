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
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Optional, Sequence

from ..observability import gpumap
from ..queue.config import QueueConfig, single_node_config
from ..queue.durations import KEEP_FINISHED, parse_retention
from ..queue import bounds
from ..queue.errors import Conflict, Forbidden, Gone, NotFound, Rejected
from ..attempt.jobdir import (MALFORMED, attempt_dir, job_dir, read_job_record, write_bytes_atomic,
                              write_json_atomic)
from ..attempt import launchfail
from ..attempt.launch import build_launch
from ..attempt.resume import local_checkpoint, local_checkpoints
from ..queue import ckptref
from ..queue.lifecycle import (check_deletable, decode_payload, deleted_answer, job_request, results_for_owner_only,
                               same_cell_job, with_defaults)
from ..observability.logs import job_fields
from ..queue.models import Attempt, Buffer, Event, JobRecord, JobSpec, SubmitRequest, new_job_id
from ..queue.ratelimit import MemoryBuckets, SubmitLimiter
from ..scheduler import make_scheduler
from ..scheduler.admission import inadmissible
from ..scheduler.base import Decision, JobRequest
from ..queue.states import LIVE_STATES, WAITING_STATES, JobState
from ..queue.shell import AttemptReport, Listener, QueueShell
from ..queue.verbs import Caller
from ..queue.text import PREEMPT_IS_FOR_ADMINS
from .kept import KeptWithin, remove_folders
from ..attempt.pids import process_start_time
from .runners import Runners
from .store import SqliteStore
from .tailing import Tailing, wait_set

log = logging.getLogger("gpuqueue.service")

TICK_INTERVAL_S = 1.0  # a scheduling pass at least this often (more on submit/finish)
STATE_SAVE_INTERVAL_S = 30.0


class QueueService(KeptWithin, Tailing, Runners, QueueShell):
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
        try:
            self._resume_path(job)  # --resume-from JOB_ID: the caller's own job, with that checkpoint
        except ckptref.RefError as e:
            raise Rejected(str(e)) from None
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

    def _resume_path(self, job: JobRecord) -> Optional[str]:
        """The checkpoint folder a job reference in ``job``'s ``--resume-from`` names (None: no
        reference, or the job has checkpoints of its own, which a resume takes first);
        :class:`~gpuqueue.queue.ckptref.RefError` if it names none of its owner's."""
        assert self.store is not None
        ref = ckptref.parse(job.spec.resume_from)
        if ref is None or local_checkpoints(job_dir(self.state_dir, job.id)):
            return None
        source = self.store.get(ref.job)
        return local_checkpoint(ref, source.owner if source else None, job.owner, job_dir(self.state_dir, ref.job))

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

    async def delete_job(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """Delete a finished job (its owner's request, or an admin's): its record, events and tail
        offsets from the store at once (from then on it exists for no one), then its folder
        (payload, logs, results, checkpoints) off the event loop. What the owner's jobs keep
        (``max_results_mb``, ``max_logs_mb``, ``max_finished``) is read from the store's rows,
        so it counts no more from that moment."""
        assert self.store is not None
        job = self.get_job(caller, job_id)
        check_deletable(job, self._iter_live(job.owner))
        self.store.delete([job.id])  # nothing awaited since the check: no state change came between
        self._changed.pop(job.id, None)
        self._to_prune.pop(job.id, None)
        await asyncio.to_thread(remove_folders, [job_dir(self.state_dir, job.id)])
        log.info("job %s deleted by %s", job.id, caller.name, extra=job_fields(job))
        return deleted_answer(job, ["record", "events", "logs", "results", "payload", "checkpoints"])

    def preempt(self, caller: Caller, job_id: str) -> JobRecord:
        """Admin: preempt a running job now (it checkpoints, stops and is queued again)."""
        if not caller.admin:
            raise Forbidden(PREEMPT_IS_FOR_ADMINS)
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
                await asyncio.sleep(0)  # a batch at a time: a long stream (a dropped job's) holds the loop no longer
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
        try:
            resume, refused = self._resume_path(job), None
        except ckptref.RefError as e:  # deleted since the submit (--keep-finished): it cannot start
            resume, refused = None, launchfail.record(launchfail.RESUME, str(e), node=node)
        launch = build_launch(job_id, job.spec, job_dir(self.state_dir, job_id), adir, number, devices, node,
                              resume_from=resume)
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
        if refused is not None:
            self._end_attempt(job, {"exit_code": 127, "stop_reason": None, "error": launchfail.message(refused),
                                    "launch_error": refused})
            return
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
        attempt.pid_started = process_start_time(proc.pid)
        self.store.put(job)

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
        # the runner says it in the job's stream ("stopping (...); it has Ns to save a checkpoint"):
        # a line of this service's as well said the same twice

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

    def _end_attempt(self, job: JobRecord, exit_record: dict[str, Any],
                     decisions: Optional[list[Decision]] = None) -> None:
        """Settle the attempt (:meth:`QueueShell._end_attempt`) and wake the loop: GPUs are free."""
        if job.current_attempt is None or job.current_attempt.outcome is not None:
            return
        said = exit_record.get("error")
        if exit_record.get("lost") and isinstance(said, str) and said:  # a killed runner: the logs say so too
            self._event(job.id, "warning", {"message": said[:4000]})
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
