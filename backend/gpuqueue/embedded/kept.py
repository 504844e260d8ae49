"""What each user's finished jobs keep in the embedded queue's state (its SQLite file and
folder, which every user of the server shares), kept within their bounds: results within
``max_results_mb`` and output within ``max_logs_mb`` (``queue/bounds.py`` decides what goes, as
in a cluster), at most ``max_finished`` finished jobs, the inputs of unfinished jobs within
``max_inputs_mb``; finished jobs deleted after ``keep_finished``, and a dropped job's output
rows deleted a chunk at a time."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from ..attempt.jobdir import attempt_dir, job_dir
from ..queue import bounds
from ..queue.config import QueueConfig
from ..queue.durations import format_duration
from ..queue.errors import Rejected
from ..queue.models import JobRecord
from ..queue.states import JobState
from ..queue.text import count
from .store import SqliteStore
from .tailing import IDLE_TAIL_S, wait_set

log = logging.getLogger("gpuqueue.service")

EXPIRE_EVERY_S = 60.0  # how often finished jobs past keep_finished are looked for
EXPIRE_BATCH = 500  # at most this many deleted a round
PRUNE_CHUNK = 5000  # dropped output rows deleted at a time (about 6 ms of SQLite)


class KeptWithin:
    """The service's part that keeps users' jobs within their bounds (a mixin of
    ``QueueService``, which sets the attributes below)."""

    store: Optional[SqliteStore]
    state_dir: Path
    config: QueueConfig
    _changed: dict[str, asyncio.Event]
    _to_prune: dict[str, None]
    _prune_wake: asyncio.Event
    _inputs_pending: dict[str, int]

    if TYPE_CHECKING:
        def _iter_live(self, owner: str) -> Iterator[JobRecord]: ...

        def _events_path(self, job_id: str, attempt: int) -> Path: ...

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
        await asyncio.to_thread(remove_folders, folders)  # checkpoints may be large: off the loop
        log.info("deleted %s that finished over %s ago: %s", count(len(gone), "job"), format_duration(keep_s),
                 ", ".join(gone[:20]) + (" ..." if len(gone) > 20 else ""))
        return gone

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
            asyncio.get_running_loop().run_in_executor(None, remove_folders, folders)
        except RuntimeError:  # no event loop (a rebuild at start): here
            remove_folders(folders)
        log.info("user %s: deleted %d oldest finished jobs to keep within max_finished = %d", owner, len(gone), cap)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def remove_folders(folders: list[Path]) -> None:
    """Delete job folders (jobs whose records were deleted) (what cannot be deleted is logged; the rest goes on)."""
    for d in folders:
        try:
            shutil.rmtree(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot delete the folder of a deleted finished job %s: %s", d, e)
