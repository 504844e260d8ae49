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

Why that is safe: a job's folder is written only while an attempt of the job runs, so after its
record exists; a record, once gone, never comes back (job ids are random); a folder a fenced-off
attempt writes after its record went is deleted at the next sweep. A store that lost its data
draws a new queue id, so no folder carries it and nothing is deleted (the old folders are then
left for the admin). A user keeps a finished job's checkpoints exactly as long as its record.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from typing import Optional

import redis

from .redis_store import RedisStore
from .shared_root import SharedRoot, StorageError

log = logging.getLogger("gpuqueue.worker")

SWEEP_S = 600.0
BATCH = 1000
UNTAGGED_RECHECK_S = 3600.0  # an untagged folder's tag is read again after this


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
        # folders whose record is gone but whose tag is another queue's (never read again) or
        # missing (read again after UNTAGGED_RECHECK_S: a tag may be on its way): id -> when to
        # read its tag again
        self._others: dict[str, float] = {}

    def run(self, stop: threading.Event) -> None:
        """Try a sweep every 0.5-1 interval until ``stop`` (a thread's loop)."""
        while not stop.wait(self.interval_s * random.uniform(0.5, 1.0)):
            try:
                self.sweep()
            except redis.RedisError as e:
                log.warning("shared root sweep skipped: redis unavailable (%s)", e)
            except StorageError as e:
                log.warning("shared root sweep: %s", e)
            except Exception:  # noqa: BLE001
                log.exception("shared root sweep failed")

    def sweep(self) -> Optional[list[str]]:
        """One sweep, unless another worker of the queue swept less than an interval ago (then
        None). Returns the ids of the job folders deleted."""
        turn = self.store.k("shared", "sweep")
        if not self.store.r.set(turn, self.instance, nx=True, px=max(1, int(self.interval_s * 1000))):
            return None
        deleted: list[str] = []
        now = time.monotonic()
        gone = self._gone(self.shared.job_ids())
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
            except StorageError as e:
                log.warning("shared root sweep: %s", e)
                continue
            deleted.append(job_id)
        if deleted:
            log.info("deleted from the shared root the checkpoints of %d jobs whose records are gone: %s",
                     len(deleted), ", ".join(deleted[:20]) + (" ..." if len(deleted) > 20 else ""))
        return deleted

    def _gone(self, ids: list[str]) -> list[str]:
        """Those of ``ids`` with no job record in the store."""
        out: list[str] = []
        for i in range(0, len(ids), BATCH):
            chunk = ids[i : i + BATCH]
            p = self.store.r.pipeline(transaction=False)
            for j in chunk:
                p.exists(self.store.k("job", j))
            out += [j for j, n in zip(chunk, p.execute()) if not n]
        return out
