"""One attempt's checkpoint uploads to the shared root, off the worker's event thread.

The worker's tail thread copies every running attempt's events to the store every 20 ms; an
upload to a slow store (a big checkpoint to S3) on that thread would hold back the live logs and
progress of every job on the node. So each attempt with a shared root gets an
:class:`AttemptUploads`: its own thread, started at the first request, which runs the pushes.

* :meth:`AttemptUploads.request` (a ``checkpoint`` event) asks for a push; requests made while
  one waits or runs are coalesced into one more push after it.
* :meth:`AttemptUploads.finish` (the attempt ended) asks for the final push, run after any push in
  progress; the tail thread asks again each round and reports the end only once it is done, with
  the exit record the push returned (a storage error fails the attempt there, as before).
* Each push counts what it copies against its owner's ``max_shared_gb`` and
  ``max_shared_files`` (all their jobs' checkpoints on the root, in the store:
  ``shared_usage.py``) as well as against the worker's ``--shared-max-gb`` (this attempt's); a
  checkpoint past any of them is not copied, and the job is told why.
* What the pushes tell the job's stream (a copy made, a storage error) is kept as store ops that
  the tail thread writes with the attempt's next events (:meth:`AttemptUploads.take_ops`).

A storage error mid-run is told to the job's stream (once per message) and tried again at the
next save; at the end it fails an attempt that would be resumed (stopped, failed), and is told
beside one that succeeded (nothing resumes from its checkpoints).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from .redis_store import Op, RedisStore
from .shared_root import CHECKPOINTS, MAX_FILES, PushMemo, SharedRoot, StorageError
from .shared_usage import SharedUsage, UserShare

log = logging.getLogger("gpuqueue.worker")

ExitRec = dict[str, Any]


class AttemptUploads:
    """The pushes of attempt ``number`` of ``job_id`` from its local job folder ``job_dir``
    (``uid``: the job's own identity, or None) to ``shared``, run by worker ``node``. ``wake``
    wakes the tail thread when there is something to write; ``fenced`` says whether the attempt
    was superseded (then nothing more of it reaches the root)."""

    def __init__(self, shared: SharedRoot, store: RedisStore, node: str, job_id: str, number: int, job_dir: Path,
                 uid: Optional[int], wake: Callable[[], None], fenced: Callable[[], bool]):
        self.shared, self.store, self.node = shared, store, node
        self.job_id, self.number, self.job_dir, self.uid = job_id, number, job_dir, uid
        self.name = f"{job_id}/{number}"
        self.memo = PushMemo()  # what this attempt's pushes did (shared_root.py)
        self.quota: Optional[UserShare] = None  # the owner's count on the root (read at the first push)
        self._wake = wake
        self._fenced = fenced
        self._error: Optional[str] = None  # the storage error last told to the stream
        self._told_crowded = False  # the job was told its checkpoints folder holds too many to list
        self._cond = threading.Condition()
        self._wanted = False
        self._final: Optional[ExitRec] = None  # the exit record waiting for the final push
        self._result: Optional[ExitRec] = None  # what the final push returned
        self._done = False
        self._closed = False
        self._ops: list[Op] = []
        self._thread: Optional[threading.Thread] = None

    def request(self) -> None:
        """Ask for a push (coalesced with any not started yet)."""
        with self._cond:
            self._wanted = True
            self._start()
            self._cond.notify()

    def finish(self, exit_rec: ExitRec) -> Optional[ExitRec]:
        """Ask for the final push with the attempt's exit record; the exit record to report once
        it is done, else None (ask again later)."""
        with self._cond:
            if self._done:
                return self._result
            if self._final is None:
                self._final = exit_rec
                self._start()
                self._cond.notify()
            return None

    def take_ops(self) -> list[Op]:
        """The store ops the pushes made since the last call (events for the job's stream)."""
        with self._cond:
            ops, self._ops = self._ops, []
        return ops

    def give_back(self, ops: list[Op]) -> None:
        """Ops taken but not written (the store was unavailable): written with the next ones."""
        with self._cond:
            self._ops[:0] = ops

    def close(self) -> None:
        """Stop after the push in progress (an attempt forgotten without its end reported)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"uploads-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._wanted or self._final is not None or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                final = self._final
                self._wanted = False
            ops: list[Op] = []
            rec = self._push(final, ops)
            with self._cond:
                self._ops += ops
                if final is not None:
                    self._result, self._done = rec, True
            self._wake()
            if final is not None:
                return

    def _push(self, exit_rec: Optional[ExitRec], ops: list[Op]) -> Optional[ExitRec]:
        """One push; what to tell goes to ``ops``. Returns the exit record to report."""
        if self._fenced():
            return exit_rec
        try:
            try:
                copied = self.shared.push(self.job_id, self.job_dir, self.uid, self.memo, self._quota())
            except StorageError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever it is, the copy is not made
                log.exception("attempt %s: pushing checkpoints failed", self.name)
                raise StorageError(f"cannot copy checkpoints to the shared root: {e}",
                                   f"cannot copy checkpoints to the shared root ({type(e).__name__})") from None
        except StorageError as e:
            log.warning("attempt %s: %s", self.name, e)  # the admin's message: the root's paths
            return self._failed(e, exit_rec, ops)
        self._error = None
        self._tell_refusals(ops)
        if copied:
            ops.append(self.store.event_op(self.job_id, "info", {
                "message": f"checkpoint {', '.join(copied)} copied to the shared root", "shared": copied,
                "node": self.node}))
        return exit_rec

    def _quota(self) -> Optional[UserShare]:
        """The job's owner's count of checkpoints on the root (None: the job's record is gone)."""
        if self.quota is None:
            job = self.store.get_job(self.job_id)
            if job is not None:
                self.quota = SharedUsage(self.store).for_job(self.job_id, job.owner)
        return self.quota

    def _tell_refusals(self, ops: list[Op]) -> None:
        """A warning for each checkpoint the push left out for the root's per-attempt bound, for
        its owner's (``max_shared_gb``, ``max_shared_files``), or for its shape (too deep, too many
        files); and once, that the job's checkpoints folder holds more runs and steps than the push
        lists (``memo.crowded``)."""
        for what, size, held in self.memo.refusals:
            ops.append(self.store.event_op(self.job_id, "warning", {
                "message": f"checkpoint {what} ({_size(size)}) is not copied to the shared root: with it, this "
                           f"attempt's checkpoints there would take {_size(held + size)}, over the limit of "
                           f"{_size(self.shared.max_bytes)} per attempt (the admin's `gpuqueue worker "
                           f"--shared-max-gb`); it stays on node {self.node} only, so an attempt elsewhere cannot "
                           f"resume from it. Save smaller checkpoints, or keep fewer (Checkpointer(max_checkpoints=N))",
                "storage_limit": True, "checkpoint": what, "bytes": size}))
        self.memo.refusals.clear()
        for u in self.memo.user_refusals:
            if u.by_files:
                what_over = (f"{u.checkpoint} ({u.files:,} files and folders, its marker included) is not copied to "
                             f"the shared root: your jobs' checkpoints there hold {u.used_files:,} of your "
                             f"{u.limit_files:,} (max_shared_files in the queue config)")
                smaller, knob = "save each checkpoint in fewer, larger files", "max_shared_files"
            else:
                what_over = (f"{u.checkpoint} ({_size(u.size)}) is not copied to the shared root: your jobs' "
                             f"checkpoints there take {_size(u.used)} of your {_size(u.limit)} (max_shared_gb in "
                             f"the queue config)")
                smaller, knob = "keep fewer or smaller checkpoints", "max_shared_gb"
            ops.append(self.store.event_op(self.job_id, "warning", {
                "message": f"checkpoint {what_over}; it stays on node {self.node} only, so an attempt elsewhere "
                           f"cannot resume from it. Your finished jobs' checkpoints leave the root when their "
                           f"records are deleted: delete those you no longer need with `gpuqueue rm JOB_ID ...` "
                           f"(`%gpuqueue rm JOB_ID`; their checkpoints go at the workers' next shared sweep), or "
                           f"they go keep_finished after they end, or past max_finished; {smaller} "
                           f"(Checkpointer(max_checkpoints=N) keeps fewer), or ask the admin for a larger {knob}",
                "storage_limit": True, "user_limit": True, "checkpoint": u.checkpoint, "bytes": u.size,
                "files": u.files}))
        self.memo.user_refusals.clear()
        if self.memo.crowded and not self._told_crowded:
            self._told_crowded = True
            ops.append(self.store.event_op(self.job_id, "warning", {
                "message": f"your job's {CHECKPOINTS} folder on node {self.node}: it holds over {MAX_FILES:,} runs "
                           f"and steps, the most the worker lists; it looked at some of them only, so your latest "
                           f"checkpoint may not be copied to the shared root. Keep fewer "
                           f"(Checkpointer(max_checkpoints=N)) and delete the step folders you do not need",
                "storage_limit": True, "checkpoint": CHECKPOINTS}))
        for what, why in self.memo.unfit:
            ops.append(self.store.event_op(self.job_id, "warning", {
                "message": f"checkpoint {what} is not copied to the shared root: {why}; it stays on node {self.node} "
                           f"only, so an attempt elsewhere cannot resume from it",
                "storage_limit": True, "checkpoint": what}))
        self.memo.unfit.clear()

    def _failed(self, e: StorageError, exit_rec: Optional[ExitRec], ops: list[Op]) -> Optional[ExitRec]:
        """Tell the job (what failed, never where the root is: ``e.public``)."""
        said = e.public
        if exit_rec is not None and exit_rec.get("exit_code") == 0 and not exit_rec.get("stop_reason"):
            ops.append(self.store.event_op(self.job_id, "warning", {  # done: nothing resumes from them
                "message": f"{said}; the job's last checkpoints stay on node {self.node} only", "storage_error": True}))
            return exit_rec
        if exit_rec is None:
            if self._error != said:
                self._error = said
                ops.append(self.store.event_op(self.job_id, "warning", {
                    "message": f"{said}; trying again at the next save", "storage_error": True}))
            return None
        return {**exit_rec, "exit_code": exit_rec.get("exit_code") or 1, "stop_reason": "storage_error", "lost": False,
                "error": f"{said} (the attempt's checkpoints are not on the shared root, so it cannot be resumed "
                         f"from them; it fails rather than start again from an older checkpoint)"}


def _size(n: int) -> str:
    return f"{n / 1e9:.3g} GB" if n >= 1e8 else f"{n / 1e6:.3g} MB"
