"""The worker's side of a running attempt (``worker.py``'s :class:`NodeAgent` holds it as its
base :class:`AttemptTailer`): its records copied from the runner's ``events.jsonl`` to the job's
Redis Stream, its start and its end reported to the daemon (with what the job produced, read
from its own folder only), every write fenced; failing rounds held back and, past
``give_up_s``, the attempt stopped and reported failed; stop requests sent to its runner; and a
runner that ended without an exit record (killed: :func:`runner_lost`) reported lost, with what
happened to the job's processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import redis

from ..attempt.cgroup import END_WAIT_S, end as end_cgroup
from ..attempt import shm
from ..attempt.identity import DynamicIdentities, Identities, Identity
from ..attempt.lost import runner_lost_record
from ..attempt.jobdir import AttemptPaths, OwnedDir, attempt_paths, job_dir, read_events, write_json_atomic
from ..observability.repeats import Repeats
from ..queue.lifecycle import result_too_big
from .forkserver import STRAY_WAIT_S, RunnerHandle
from .redis_store import Fenced, Op, RedisStore
from .shared_root import SharedRoot
from .worker_uploads import AttemptUploads

log = logging.getLogger("gpuqueue.worker")

TAIL_INTERVAL_S = 0.02
TAIL_RETRY_FIRST_S = 0.1  # an attempt whose round failed is tried again after this long ...
TAIL_RETRY_MAX_S = 10.0  # ... doubled at each failure in a row, up to this
GIVE_UP_S = 300.0  # an attempt whose rounds fail this long is stopped and reported failed
STORE_RETRY_MAX_S = 5.0  # the store unavailable: the tail loop waits up to this long between tries
# Redis error codes that say the store as a whole cannot take writes now (not this attempt's)
STORE_DOWN_CODES = ("OOM", "LOADING", "MASTERDOWN", "NOREPLICAS", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MISCONF",
                    "READONLY")


@dataclass
class LocalAttempt:
    """One attempt this worker launched."""

    job_id: str
    number: int
    kind: str
    dir: Path  # the runner's records
    proc: RunnerHandle
    paths: Optional[AttemptPaths] = None
    ident: Optional[Identity] = None
    offset: int = 0
    started: bool = False
    fenced: bool = False
    stop_sent: bool = False
    uploads: Optional[AttemptUploads] = None  # pushes to the shared root, on their own thread
    held_exit: Optional[dict[str, Any]] = None  # the end, held until the final push is done
    extra: dict[str, Any] = field(default_factory=dict)
    # the tail rounds of this attempt that raised, in a row, each error logged once (_tail_failed)
    failing: Repeats = field(init=False)
    retry_at: float = 0.0  # monotonic: not tailed again before
    gave_up: bool = False  # reported failed by the worker: its records go nowhere now
    cgroup: Optional[Path] = None  # the attempt's cgroup until it is ended (gpuqueue.attempt.cgroup)
    cgroup_ended: Optional[tuple[int, int]] = None  # (processes it held, still ran) when it was ended

    def __post_init__(self) -> None:
        self.failing = Repeats(log, before=f"attempt {self.job_id}/{self.number}: the error before came %d more times")


class AttemptTailer:
    """Tailing, exit reports and stop requests of the attempts a worker runs (a base of
    ``worker.NodeAgent``, which sets these attributes)."""

    store: RedisStore
    node: str
    state_dir: Path
    shared: Optional[SharedRoot]
    max_result_bytes: int
    give_up_s: float
    attempts: dict[tuple[str, int], LocalAttempt]
    claimed: set[tuple[str, int]]
    identities: Optional[Identities]
    _lock: threading.Lock
    _stop: threading.Event
    _tail_wake: threading.Event
    # uid -> the stop of the removal of what it left in /dev/shm, while one runs (_remove_shm);
    # _shm_removed (on _lock) is notified as one ends
    _shm_removals: dict[int, threading.Event]
    _shm_removed: threading.Condition

    def fence(self, job_id: str, number: int) -> tuple[str, str]:
        """The guard every write of this attempt carries."""
        return (self.store.k("fence", job_id), f"{number}:{self.node}")

    # -- tailing --------------------------------------------------------------------------
    def _tail_loop(self) -> None:
        """Copy every attempt's new records to the store, every TAIL_INTERVAL_S. A round that
        fails for one attempt (:meth:`_tail_failed`) holds back that attempt only, with a
        growing delay; the store unavailable for all (:func:`store_down`) holds back the loop."""
        down = Repeats(log)  # the store's outage, logged once per distinct error
        wait = TAIL_INTERVAL_S
        while not self._stop.is_set():
            self._tail_wake.wait(wait)  # set when a runner ends: its exit goes out at once
            self._tail_wake.clear()
            wait = TAIL_INTERVAL_S
            with self._lock:
                live = list(self.attempts.values())
            now = time.monotonic()
            for la in live:
                if la.retry_at > now:
                    continue
                try:
                    self._tail(la)
                except Exception as e:  # noqa: BLE001
                    if store_down(e):  # every attempt would meet it: wait, then all try again
                        down.seen(f"redis unavailable ({e}); jobs go on, their events are copied once it is back")
                        wait = down.backoff(0.5, STORE_RETRY_MAX_S)
                        break
                    self._tail_failed(la, e)
                else:
                    if la.failing.over(f"attempt {la.job_id}/{la.number}: its records are copied again",
                                       after=", after {rounds} failed rounds in {seconds:.1f} s (last: {last})"):
                        la.retry_at = 0.0
            else:
                down.over("redis is available again: the jobs' records are copied to it again")

    def _tail_failed(self, la: LocalAttempt, e: Exception) -> None:
        """A round of ``la`` raised: it is tried again after a delay that doubles at each failure
        in a row (:data:`TAIL_RETRY_FIRST_S` to :data:`TAIL_RETRY_MAX_S`), the other attempts
        going on meanwhile; each distinct error is logged once (then how often it came). After
        ``give_up_s`` of failures the attempt is stopped and reported failed, naming the error
        (:meth:`_give_up`): one that never gets through must not hold its GPUs for ever."""
        now = time.monotonic()
        text, f = _say(e), la.failing
        f.seen(text, logging.ERROR, exc_info=e, line=(
            f"attempt {la.job_id}/{la.number}: copying its records to the store failed: {text}; tried again with a "
            f"growing delay (up to {TAIL_RETRY_MAX_S:g} s), and stopped and reported failed if it still fails after "
            f"{self.give_up_s:g} s"))
        la.retry_at = now + f.backoff(TAIL_RETRY_FIRST_S, TAIL_RETRY_MAX_S)
        if la.gave_up:
            if la.proc.poll() is not None:
                self._forget(la)
        elif now - f.since >= self.give_up_s:
            self._give_up(la, now - f.since)

    def _give_up(self, la: LocalAttempt, failing_s: float) -> None:
        """Report ``la`` failed, naming the error, and stop it; from then on nothing of it reaches
        the store (as for a fenced attempt). A report that does not get through is tried again
        at the attempt's next retry."""
        error = (f"the worker on node {self.node} could not copy this attempt's records (output, events, end) to the "
                 f"queue's store for {failing_s:.0f} s ({la.failing.text}); it stopped the attempt and reports it "
                 f"failed. Its output since then is not kept; the admin finds the cause in that worker's log")
        rec = {"exit_code": 1, "stop_reason": None, "error": error, "worker_gave_up": True}
        msg = {"op": "exit", "job": la.job_id, "attempt": la.number, "node": self.node, "rec": rec}
        try:
            self.store.exec([["SET", self.store.k("exit", la.job_id, la.number), json.dumps(rec)],
                             self.store.report_op(msg)], guards=[self.fence(la.job_id, la.number)])
        except Fenced:
            pass  # settled or superseded already
        except Exception as e:  # noqa: BLE001
            log.warning("attempt %s/%s: cannot report it failed yet (%s); trying again", la.job_id, la.number, _say(e))
            return
        f = la.failing
        log.error("attempt %s/%s: stopped and reported failed after %d failed rounds in %.0f s (%s%s)",
                  la.job_id, la.number, f.rounds, failing_s, f.text,
                  f"; it came {f.again} more times" if f.again else "")
        la.gave_up = la.fenced = True
        f.told()
        self._signal_stop(la, "failed", 5.0)

    def _tail(self, la: LocalAttempt) -> None:
        ended = la.proc.poll() is not None
        if ended:  # before its end is reported: nothing of the job runs once the scheduler hears of it
            self._end_cgroup(la)
        batch = read_events(la.dir / "events.jsonl", la.offset)
        exit_rec = batch.exit or la.held_exit
        ops: list[Op] = [self.store.event_op(la.job_id, type_, d, t) for t, type_, d in batch.events]
        started: Optional[dict[str, Any]] = None
        if batch.runner is not None:
            started = {"t": batch.runner["t"], "pid": batch.runner["data"].get("runner_pid")}
        new_offset = batch.offset
        if la.fenced:  # refused: nothing of a stale attempt reaches the store
            la.offset = new_offset
            if ended:
                self._forget(la)
            return
        if started and not la.started:
            msg = {"op": "started", "job": la.job_id, "attempt": la.number, "node": self.node, **started}
            ops += [["SET", self.store.k("started", la.job_id, la.number), json.dumps(msg)], self.store.report_op(msg)]
        if exit_rec is None and ended and not batch.complete_line:
            exit_rec = runner_lost(self.node, la.proc, la.cgroup_ended)
            ops.append(self.store.event_op(la.job_id, "warning", {"message": exit_rec["error"]}))
        if self.shared is not None:
            if exit_rec is not None:  # the end is reported once its final push is done
                la.held_exit = exit_rec
                exit_rec = self._uploads(la).finish(exit_rec)
            elif any(t == "checkpoint" for _, t, _ in batch.events):
                self._uploads(la).request()
        exit_ops = self._exit_ops(la, exit_rec) if exit_rec is not None else []
        told = la.uploads.take_ops() if la.uploads is not None else []  # what the uploads tell the stream
        ops += told + exit_ops
        if not ops and new_offset == la.offset:
            return
        tail_key = self.store.k("tail", la.job_id, la.number)
        ops.append(["SET", tail_key, str(new_offset)])
        try:
            self.store.exec(ops, guards=[self.fence(la.job_id, la.number), (tail_key, str(la.offset) if la.offset else "")])
        except Fenced as e:
            if e.key == tail_key:  # our own earlier write went through after all
                la.offset = int(e.found or 0)
                return
            log.warning("attempt %s/%s is fenced off (%s): stopping it, its records are refused", la.job_id, la.number, e)
            la.fenced = True
            self._signal_stop(la, "fenced", 5.0)
            return
        except Exception:
            if told and la.uploads is not None:  # written with the next try
                la.uploads.give_back(told)
            raise
        la.offset = new_offset
        if started:
            la.started = True
        if exit_rec is not None:
            log.info("attempt %s/%s ended: %s", la.job_id, la.number, _ended(exit_rec))
            self._forget(la)

    def _uploads(self, la: LocalAttempt) -> AttemptUploads:
        """The attempt's uploads to the shared root, on a thread of their own (worker_uploads.py)."""
        if la.uploads is None:
            assert self.shared is not None
            la.uploads = AttemptUploads(self.shared, self.store, self.node, la.job_id, la.number,
                                        la.paths.job if la.paths else job_dir(self.state_dir, la.job_id),
                                        la.ident.uid if la.ident else None, self._tail_wake.set, lambda: la.fenced)
        return la.uploads

    def _exit_ops(self, la: LocalAttempt, exit_rec: dict[str, Any]) -> list[Op]:
        rec = dict(exit_rec)
        ops: list[Op] = []
        try:
            own = self._attempt_folder(la)
        except OSError as e:  # gone, or replaced by a link: nothing of it is taken
            log.warning("attempt %s/%s: its folder cannot be read (%s)", la.job_id, la.number, e)
            own = None
        try:
            rec["error_record"] = own.read_json("error.json") if own else None
            rec["result"] = own.read_json("result.json") if own else None
            size = own.size("result.pkl") if own and la.kind == "cell" and rec.get("exit_code") == 0 else None
            if size is not None and size > self.max_result_bytes:
                rec["exit_code"] = 1
                rec.update(result_too_big(size, self.max_result_bytes))  # failed at once: a retry makes the same
            elif size is not None and own is not None:
                blob = own.read("result.pkl", self.max_result_bytes)
                tmp = self.store.k("result", la.job_id, la.number)
                self.store.rb.set(tmp, blob or b"", px=3_600_000)
                ops.append(["RENAME", tmp, self.store.k("result", la.job_id)])
                ops.append(["PERSIST", self.store.k("result", la.job_id)])
                rec["result_stored"] = True
                rec["result_bytes"] = len(blob or b"")
        finally:
            if own is not None:
                own.close()
        msg = {"op": "exit", "job": la.job_id, "attempt": la.number, "node": self.node, "rec": rec}
        return ops + [["SET", self.store.k("exit", la.job_id, la.number), json.dumps(msg["rec"])], self.store.report_op(msg)]

    def _attempt_folder(self, la: LocalAttempt) -> OwnedDir:
        """The attempt's own folder, opened as :class:`OwnedDir` (no links followed; only the
        owner's regular files read)."""
        paths = la.paths or attempt_paths(self.state_dir, la.job_id, la.number, split=False)
        if la.ident is None:
            return OwnedDir(paths.attempt.parent, [paths.attempt.name])
        return OwnedDir(paths.job.parent, [paths.job.name, paths.attempt.name], la.ident.uid, la.ident.gid)

    def _report_exit_error(self, job_id: str, number: int, error: str,
                           launch_error: Optional[dict[str, Any]] = None) -> None:
        """Report an attempt that did not start as ended (with its ``launch_error``, if known)."""
        rec: dict[str, Any] = {"exit_code": 127, "stop_reason": None, "error": error}
        if launch_error is not None:
            rec["launch_error"] = launch_error
        msg = {"op": "exit", "job": job_id, "attempt": number, "node": self.node, "rec": rec}
        try:
            self.store.exec([["SET", self.store.k("exit", job_id, number), json.dumps(rec)], self.store.report_op(msg)],
                            guards=[self.fence(job_id, number)])
        except Fenced:
            pass

    def _end_cgroup(self, la: LocalAttempt) -> None:
        """End the attempt's cgroup, if it has one: every process still in it is killed, then it
        is removed (``gpuqueue.attempt.cgroup.end``; blocks while they exit, at most
        ``END_WAIT_S``)."""
        if la.cgroup is None:
            return
        cg, la.cgroup = la.cgroup, None
        try:
            la.cgroup_ended = held, left = end_cgroup(cg)
        except OSError as e:
            log.warning("attempt %s/%s: cannot end its cgroup %s (%s)", la.job_id, la.number, cg, e)
            return
        if left:
            log.warning("attempt %s/%s: %d of its processes still run %g s after its cgroup %s was killed (stuck in "
                        "the kernel, e.g. in the GPU driver); the cgroup is kept", la.job_id, la.number, left,
                        END_WAIT_S, cg)
        elif held:
            log.info("attempt %s/%s: its cgroup ended the %d processes the job still ran", la.job_id, la.number, held)

    def _forget(self, la: LocalAttempt) -> None:
        self._end_cgroup(la)
        with self._lock:
            self.attempts.pop((la.job_id, la.number), None)
        if la.uploads is not None:
            la.uploads.close()
        if la.ident is not None and isinstance(self.identities, DynamicIdentities):
            self._remove_shm(la.ident.uid)

    def _remove_shm(self, uid: int) -> None:
        """Remove what a dynamic ``uid`` left in ``/dev/shm`` once no attempt of it runs here,
        none is being launched and no process of it runs on the node (``gpuqueue.attempt.shm``),
        in a thread of its own: a job may leave millions of names there, some seconds a million,
        and this thread's loop and the worker's lock (every launch of the node, its heartbeats)
        waited for them all. A launch of ``uid`` meanwhile stops it first
        (:meth:`_end_shm_removal`), so no job that starts loses what it makes there; the rest
        goes at the uid's next end here."""
        with self._lock:
            if self._busy(uid) or uid in self._shm_removals:
                return
            stop = self._shm_removals[uid] = threading.Event()
        threading.Thread(target=self._shm_removal, args=(uid, stop), name=f"shm-{uid}", daemon=True).start()

    def _shm_removal(self, uid: int, stop: threading.Event) -> None:
        try:
            removed = 0 if shm.uid_runs(uid) else shm.remove_owned(uid, stop=stop)
            if removed:
                log.info("uid %s: removed the %d entries its jobs left in %s", uid, removed, shm.SHM)
        finally:
            with self._lock:
                del self._shm_removals[uid]
                self._shm_removed.notify_all()

    def _end_shm_removal(self, uid: int) -> None:
        """Before a job of ``uid`` starts here: stop the removal of what the uid left in
        ``/dev/shm`` if one runs, and wait until it has (it looks between two names)."""
        with self._lock:
            stop = self._shm_removals.get(uid)
            if stop is None:
                return
            stop.set()
            while uid in self._shm_removals:
                self._shm_removed.wait()

    def _busy(self, uid: int) -> bool:
        """Whether an attempt is being launched here, or one of ``uid`` runs (hold the lock)."""
        return bool(self.claimed - set(self.attempts)) or any(
            a.ident is not None and a.ident.uid == uid for a in self.attempts.values())

    # -- stopping ------------------------------------------------------------------------
    def _signal_stop(self, la: LocalAttempt, reason: str, grace_s: float) -> None:
        """As the embedded service does: control.json, then SIGUSR1 to the runner."""
        if la.stop_sent:
            return
        la.stop_sent = True
        write_json_atomic(la.dir / "control.json", {"reason": reason, "grace_s": grace_s, "time": time.time()})
        if la.proc.poll() is None:
            try:
                os.kill(la.proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass


def runner_lost(node: str, proc: RunnerHandle, cgroup_ended: Optional[tuple[int, int]] = None) -> dict[str, Any]:
    """The exit record of an attempt whose runner ended without writing one (killed by the
    out-of-memory killer or an admin, or crashed): what happened to the runner and to the job's
    processes (the fork server ended them: ``forkserver.py``; or, the server gone too, the
    attempt's cgroup: ``cgroup_ended``, (processes it held, still ran)), and what comes next
    (the wording: ``gpuqueue.attempt.lost``)."""
    if cgroup_ended is not None and cgroup_ended[1]:
        unchecked = (f"its runner fork server is gone too; the worker killed the {cgroup_ended[0]} processes of the "
                     f"attempt's cgroup, but {cgroup_ended[1]} had not ended after {END_WAIT_S:g} s (stuck in the "
                     f"kernel, e.g. in the GPU driver): the admin should check {node}")
    elif cgroup_ended is not None:
        unchecked = (f"its runner fork server is gone too; the worker ended the {cgroup_ended[0]} processes the job "
                     f"still ran (all of the attempt's cgroup), so none of it runs on the attempt's GPUs")
    else:
        unchecked = ("the worker could not check that the job's processes ended (its runner fork server is gone "
                     f"too): the admin should look for them on {node}")
    return runner_lost_record(node, proc.returncode, proc.strays_ended, proc.strays_left or 0, STRAY_WAIT_S,
                              "the worker", unchecked)


def _ended(rec: dict[str, Any]) -> str:
    """How an attempt ended, for the worker's log: its exit code and why, in a few words."""
    if rec.get("launch_error"):
        return f"could not start ({rec['launch_error'].get('error')})"
    how = "its runner was lost" if rec.get("lost") else f"exit code {rec.get('exit_code')}"
    return how + (f", stopped ({rec['stop_reason']})" if rec.get("stop_reason") else "")


def store_down(e: BaseException) -> bool:
    """Whether ``e`` says the store as a whole cannot take writes now (down, loading, a replica,
    out of memory), rather than that this attempt's write was refused."""
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
        return True
    if isinstance(e, redis.ResponseError):
        text = str(e)
        return text.split(" ", 1)[0] in STORE_DOWN_CODES or "OOM command not allowed" in text
    return False


def _say(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= 500 else text[:500] + "..."

