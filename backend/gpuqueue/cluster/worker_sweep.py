"""Deleting finished jobs' folders from the workers' shared root (``--shared-dir``).

The daemon deletes a finished job's record ``--keep-finished`` (default 30 days) after it ended,
but it never touches the shared root: only the workers hold its credentials. So the workers
sweep it. Every ``--shared-sweep`` seconds (default 600), one worker of the queue (the one that
takes ``<prefix>:shared:sweep``, a key that expires after that interval, so the turn passes on
if it dies) lists ``<root>/jobs/`` and deletes the folder of every job

* tagged with this queue's id (``<prefix>:shared:queue``, drawn once by the first worker with a
  shared root and written by :meth:`SharedRoot.push` into each job folder it starts); a folder
  of another queue (another store or prefix) sharing the root, or one written before tags
  existed, is left alone, and
* whose record (``<prefix>:job:<id>``) is gone from the store.

The job's checkpoints then no longer count against its owner's ``max_shared_gb``
(:meth:`SharedUsage.drop_job`, after the folder is deleted).

Why that is safe: a job's folder is written only while an attempt of the job runs, so after its
record exists; a record, once gone, never comes back (job ids are random); a folder a fenced-off
attempt writes after its record went is deleted at the next sweep. A store that lost its data
draws a new queue id, so no folder carries it and nothing is deleted (the old folders are then
left for the admin). A user keeps a finished job's checkpoints exactly as long as its record.

The same rule for each worker's own disk (:class:`LocalSweeper`, every ``--local-sweep``
seconds, default 600, on every worker: it is the node's own disk, so no turn is taken): the
folders ``<state-dir>/jobs/<id>`` and ``<state-dir>/work/<id>`` of a job tagged with this queue's
id (``jobs/<id>/QUEUE``, written at each launch) whose record is gone and of which no attempt
runs or is being launched on the node. Nothing else under the state folder is touched (not
``home/``, not a name that is not a job id, not a link). ``work/<id>`` belongs to the job's
(untrusted) user, so it is deleted without following any link it holds.
"""

from __future__ import annotations

import logging
import os
import random
import re
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional

import redis

from ..attempt.removal import remove_tree
from ..queue.text import count
from .redis_store import RedisStore
from .shared_root import QUEUE_TAG, SharedRoot, StorageError
from .shared_usage import SharedUsage

log = logging.getLogger("gpuqueue.worker")

SWEEP_S = 600.0
BATCH = 1000
UNTAGGED_RECHECK_S = 3600.0  # an untagged folder's tag is read again after this
JOB_ID = re.compile(r"j-[0-9a-f]{1,64}")  # queue.models.new_job_id: "j-" and 12 hex digits


def run_every(interval_s: float, stop: threading.Event, sweep: Callable[[], object], what: str) -> None:
    """Call ``sweep`` every 0.5-1 ``interval_s`` until ``stop``; a Redis or storage error skips
    that sweep with a warning, nothing ends the loop."""
    while not stop.wait(interval_s * random.uniform(0.5, 1.0)):
        try:
            sweep()
        except redis.RedisError as e:
            log.warning("%s skipped: redis unavailable (%s)", what, e)
        except (StorageError, OSError) as e:
            log.warning("%s: %s", what, e)
        except Exception:  # noqa: BLE001
            log.exception("%s failed", what)


def records_gone(store: RedisStore, ids: list[str]) -> list[str]:
    """Those of ``ids`` with no job record in the store (EXISTS, ``BATCH`` to a pipeline)."""
    out: list[str] = []
    for i in range(0, len(ids), BATCH):
        chunk = ids[i : i + BATCH]
        p = store.r.pipeline(transaction=False)
        for j in chunk:
            p.exists(store.k("job", j))
        out += [j for j, n in zip(chunk, p.execute()) if not n]
    return out


def same_queue(store: RedisStore, queue: Optional[str]) -> bool:
    """Whether the store still holds the queue id ``queue`` this worker drew at start. Not so
    (it lost its data since: every record is gone, a new id is drawn), nothing may be swept:
    the jobs' folders are left for the admin, as a restarted worker leaves them."""
    now = queue_id(store)
    if queue is not None and now == queue:
        return True
    log.warning("sweep skipped: this queue's id in the store is %s, not %s as when this worker started "
                "(the store lost its data?): its jobs' folders are left alone; restart the worker", now, queue)
    return False


def queue_id(store: RedisStore) -> str:
    """This queue's id (drawn by the first worker that asks; kept in the store)."""
    key = store.k("shared", "queue")
    store.r.set(key, uuid.uuid4().hex, nx=True)
    got = store.r.get(key)
    if not got:
        raise redis.RedisError(f"{key} could not be read back")
    return str(got)


class Sweeper:
    """Deletes from ``shared`` the folders of this queue's jobs whose records are gone."""

    def __init__(self, store: RedisStore, shared: SharedRoot, instance: str, interval_s: float = SWEEP_S):
        self.store = store
        self.shared = shared
        self.instance = instance
        self.interval_s = interval_s
        self.usage = SharedUsage(store)
        # folders whose record is gone but whose tag is another queue's (never read again) or
        # missing (read again after UNTAGGED_RECHECK_S: a tag may be on its way): id -> when to
        # read its tag again
        self._others: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        """Try a sweep every 0.5-1 interval until ``stop`` (a thread's loop)."""
        run_every(self.interval_s, stop, self.sweep, "shared root sweep")

    def sweep(self) -> Optional[list[str]]:
        """One sweep, unless another worker of the queue swept less than an interval ago (then
        None). Returns the ids of the job folders deleted."""
        turn = self.store.k("shared", "sweep")
        if not self.store.r.set(turn, self.instance, nx=True, px=max(1, int(self.interval_s * 1000))):
            return None
        if not same_queue(self.store, self.shared.queue):
            return []
        deleted: list[str] = []
        now = time.monotonic()
        gone = records_gone(self.store, self.shared.job_ids())
        still = set(gone)
        self._others = {j: t for j, t in self._others.items() if j in still}
        for job_id in gone:
            if self._others.get(job_id, -1.0) > now:
                continue
            try:
                tag = self.shared.queue_of(job_id)
                if tag is None or tag != self.shared.queue or self.shared.queue is None:
                    self._others[job_id] = now + UNTAGGED_RECHECK_S if tag is None else float("inf")
                    continue
                self.shared.delete_job(job_id)
                self.usage.drop_job(job_id)
            except StorageError as e:
                log.warning("shared root sweep: %s", e)
                continue
            deleted.append(job_id)
        if deleted:
            log.info("deleted from the shared root the checkpoints of %s whose records are gone: %s",
                     count(len(deleted), "job"), ", ".join(deleted[:20]) + (" ..." if len(deleted) > 20 else ""))
        return deleted



def tag_job_folder(folder: Path, queue: str) -> None:
    """Write ``folder/QUEUE`` (this queue's id) unless it is there: the mark of a job folder
    the local sweep may delete (an existing file or link is left as it is). Written under a fresh
    name, then linked: a tag is whole or absent."""
    tag = folder / QUEUE_TAG
    if os.path.lexists(tag):  # a later attempt of the job
        return
    tmp = folder / f".{QUEUE_TAG}.{uuid.uuid4().hex[:12]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, queue.encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, tag, follow_symlinks=False)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


class LocalSweeper:
    """Deletes from this node's ``state_dir`` the folders of this queue's jobs whose records are
    gone and that have no attempt here (module docstring).

    ``hold(job_id)`` is asked right before a job's folders are deleted: False (an attempt of the
    job runs or is being launched here) keeps them; True promises that no launch of the job
    makes its folders until ``release(job_id)`` (NodeAgent's lock)."""

    def __init__(self, store: RedisStore, state_dir: Path, queue: Optional[str],
                 hold: Callable[[str], bool], release: Callable[[str], None], interval_s: float = SWEEP_S):
        self.store = store
        self.state_dir = Path(state_dir)
        self.queue = queue  # this queue's id, as the worker drew it at start
        self.hold, self.release = hold, release
        self.interval_s = interval_s
        self._untagged: set[str] = set()  # gone jobs' folders without our tag, already reported

    def run(self, stop: threading.Event) -> None:
        """Sweep every 0.5-1 interval until ``stop`` (a thread's loop)."""
        run_every(self.interval_s, stop, self.sweep, "node job folder sweep")

    def job_ids(self) -> list[str]:
        """The job ids that name a folder (not a link) directly under ``<state_dir>/jobs``."""
        try:
            with os.scandir(self.state_dir / "jobs") as it:
                return sorted(e.name for e in it if JOB_ID.fullmatch(e.name) and e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def sweep(self) -> list[str]:
        """One sweep; the ids of the jobs whose folders were deleted."""
        ids = self.job_ids()
        if not ids or not same_queue(self.store, self.queue):
            return []
        deleted: list[str] = []
        untagged: list[str] = []
        for job_id in records_gone(self.store, ids):
            tag = self._tag(job_id)
            if tag != self.queue:
                if tag is None and job_id not in self._untagged:
                    untagged.append(job_id)
                continue
            if not self.hold(job_id):
                continue
            try:
                self._delete(job_id)
                deleted.append(job_id)
            except OSError as e:
                log.warning("cannot delete the folders of job %s from %s: %s", job_id, self.state_dir, e)
            finally:
                self.release(job_id)
        if untagged:
            self._untagged.update(untagged)
            log.info("%d job folders in %s/jobs whose records are gone carry no queue tag (written before "
                     "tags): left alone, delete them by hand: %s", len(untagged), self.state_dir,
                     ", ".join(untagged[:20]) + (" ..." if len(untagged) > 20 else ""))
        if deleted:
            log.info("deleted from this node the folders of %s whose records are gone: %s", count(len(deleted), "job"),
                     ", ".join(deleted[:20]) + (" ..." if len(deleted) > 20 else ""))
        return deleted

    def _tag(self, job_id: str) -> Optional[str]:
        """The queue id ``jobs/<id>/QUEUE`` holds (None: none, or not a regular file)."""
        try:
            fd = os.open(self.state_dir / "jobs" / job_id / QUEUE_TAG, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, 200).decode(errors="replace").strip()
        finally:
            os.close(fd)

    def _delete(self, job_id: str) -> None:
        """``work/<id>`` (the job user's), then ``jobs/<id>`` with its tag last, so a sweep cut
        short finds what is left still tagged. No link is followed (``gpuqueue.attempt.removal``;
        a link itself is unlinked)."""
        _remove(self.state_dir / "work" / job_id)
        records = self.state_dir / "jobs" / job_id
        try:
            with os.scandir(records) as it:
                names = [e.name for e in it if e.name != QUEUE_TAG]
        except FileNotFoundError:
            return
        for name in names:
            _remove(records / name)
        _remove(records / QUEUE_TAG)
        _remove(records)


def _remove(path: Path) -> None:
    """Delete ``path``: a folder with everything in it, never following a link (a link, or a
    file, is itself unlinked). Missing: nothing to do."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # the job user's folder (its other jobs may still change it): gpuqueue.attempt.removal
        if not remove_tree(path):
            raise OSError(f"{path} could not be removed (whatever is left stays for the next sweep)")
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
