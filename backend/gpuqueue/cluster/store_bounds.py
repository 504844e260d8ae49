"""What each user's finished jobs keep in Redis, kept within their bounds by the scheduler daemon
(the arithmetic and the messages are ``queue/bounds.py``'s, shared with the embedded mode):

* stored results within ``max_results_mb`` and the output of finished jobs within
  ``max_logs_mb``: at a job's end its bytes join its owner's kept set and the oldest go until the
  total fits. A kept set is a hash (id -> bytes and end time), a ZSET of the same ids by end
  time and a running total, changed together inside the daemon's guarded writes, so a job's end
  reads the total and only the oldest entries it drops: O(log n) in the user's finished jobs,
  where it used to read and parse the whole hash;
* finished records within ``max_finished`` (``done:<user>`` by end time);
* dropped output removed from its stream a chunk at a time (``_prune_logs``).

Every write goes through the daemon's ``_exec`` (guarded by its leader token), so a deposed
leader changes nothing and a failover never leaves a kept set half-changed.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Optional

from ..queue import bounds
from ..queue.config import QueueConfig
from ..queue.models import JobRecord
from .redis_store import LostLeadership, Op, RedisStore

log = logging.getLogger("gpuqueue.daemon")

EXPIRE_BATCH = 200  # jobs deleted per guarded write
PRUNE_BUDGET_S = 0.01  # of each step spent removing dropped logs from their streams (max_logs_mb)
PRUNE_CHUNK = 1000  # stream entries looked at per call (about 2 ms of Redis: a 256 MB stream takes ~1.7 s in all)

# One chunk of a dropped job's stream (KEYS[1]) copied into KEYS[2] without its output records
# (ARGV[4..]: their types), from the cursor the hash KEYS[3] keeps for the job (ARGV[2]); at the
# end the copy replaces the stream and the job leaves the set KEYS[4]. KEYS[5] is the leader lock
# (ARGV[1]: this daemon's token). Returns 1 when done, 0 to go on, -1 when not the leader.
_PRUNE = """
if redis.call('GET', KEYS[5]) ~= ARGV[1] then return -1 end
local id, count = ARGV[2], tonumber(ARGV[3])
local drop = {}
for i = 4, #ARGV do drop[ARGV[i]] = true end
local cur = redis.call('HGET', KEYS[3], id) or '0-0'
local rows = redis.call('XRANGE', KEYS[1], '(' .. cur, '+', 'COUNT', count)
for _, row in ipairs(rows) do
  local f, typ = row[2], nil
  for i = 1, #f, 2 do if f[i] == 'type' then typ = f[i + 1] end end
  if not drop[typ] then redis.call('XADD', KEYS[2], row[1], unpack(f)) end
  cur = row[1]
end
if #rows < count then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) else redis.call('DEL', KEYS[1]) end
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  return 1
end
redis.call('HSET', KEYS[3], id, cur)
return 0
"""


class StoreBounds:
    """The daemon's part that keeps users' finished jobs within their bounds (a mixin of
    ``Daemon``, which gives the store, the config, the leader token and the guarded write)."""

    store: RedisStore
    config: QueueConfig
    token: Optional[str]

    def _init_bounds(self) -> None:
        self._next_prune = 0.0
        self._prune = self.store.r.register_script(_PRUNE)

    if TYPE_CHECKING:
        def _exec(self, ops: list[Op]) -> None: ...

    def _keep_within(self, bound: bounds.Bound, kind: str, job: JobRecord,
                     nbytes: int) -> tuple[list[Op], bounds.Verdict]:
        """Writes that put ``job``'s ``nbytes`` in its owner's kept set ``kind`` ("results" or
        "logs") and take out the oldest until it fits ``bound``'s limit, or, when it alone is
        over the limit, take ``job`` out; with the verdict (what the records say). A set an older
        version wrote (its hash alone) is indexed first, in a guarded write of its own."""
        st, owner = self.store, job.owner
        limit = getattr(self.config.limits_for(owner), bound.knob)
        total, consistent, oldest = st.kept_set(kind, owner, without=job.id)
        if not consistent:
            self._exec(st.reindex_ops(kind, owner))
            log.info("user %s: indexed their kept %s (written by an earlier version)", owner, bound.what)
            total, _, oldest = st.kept_set(kind, owner, without=job.id)
        verdict = bounds.keep_within(bound, total, oldest, nbytes, limit)
        ops = [st.keep_op(kind, owner, job.id, nbytes, time.time()) if verdict.kept else st.unkeep_op(kind, owner, job.id)]
        ops += [st.unkeep_op(kind, owner, job_id) for job_id, _, _ in verdict.drop]
        line = verdict.log_line(bound, owner, limit)
        if line:
            log.info(line)
        return ops, verdict

    def _keep_results_within(self, job: JobRecord, older: dict[str, JobRecord]) -> list[Op]:
        """Writes that add ``job``'s stored results to its owner's and drop the owner's oldest
        until all fit ``max_results_mb`` (each dropped job's record says so); results over the
        whole limit are not kept (``job`` says so)."""
        ops, verdict = self._keep_within(bounds.RESULTS, "results", job, job.result_bytes)
        if not verdict.kept:
            job.result_dropped = verdict.too_big
            return ops + [["DEL", self.store.k("result", job.id)]]
        why = {job_id: msg for job_id, _, msg in verdict.drop}
        for old in self._older(list(why), older):
            old.result_dropped = why[old.id]
        return ops + [["DEL", self.store.k("result", job_id)] for job_id in why]

    def _keep_logs_within(self, job: JobRecord, older: dict[str, JobRecord]) -> list[Op]:
        """Writes that add ``job``'s output (its event stream, as Redis holds it now) to its
        owner's and drop the owner's oldest until all fit ``max_logs_mb``: each such job's record
        says so and its output records go (``_prune_logs``); output over the whole limit is not
        kept (``job`` says so)."""
        st = self.store
        # what the stream takes in Redis; SAMPLES 0 walks its nodes (a few ms for 256 MB)
        job.log_bytes = int(st.r.memory_usage(st.k("ev", job.id), samples=0) or 0)
        ops, verdict = self._keep_within(bounds.LOGS, "logs", job, job.log_bytes)
        now = repr(time.time())
        if not verdict.kept:
            job.logs_dropped = verdict.too_big
            return ops + [["ZADD", st.k("logprune"), now, job.id]]
        why = {job_id: msg for job_id, _, msg in verdict.drop}
        for old in self._older(list(why), older):
            old.logs_dropped = why[old.id]
        return ops + [["ZADD", st.k("logprune"), now, job_id] for job_id in why]

    def _older(self, ids: list[str], older: dict[str, JobRecord]) -> list[JobRecord]:
        """The records of ``ids`` (older finished jobs), as already changed in ``older``."""
        found = {j.id: j for j in self.store.get_jobs([i for i in ids if i not in older])}
        for job_id in ids:
            if job_id in found:
                older[job_id] = found[job_id]
        return [older[i] for i in ids if i in older]

    def _prune_logs(self) -> None:
        """Remove the output records of the jobs whose logs were dropped (``gq:logprune``), a
        chunk at a time within a small budget per step: each stream is copied without them
        inside Redis and then replaces the old one. Readers already leave them out
        (``bounds.visible_events``)."""
        now_m = time.monotonic()
        if now_m < self._next_prune:
            return
        st = self.store
        ids = st.r.zrange(st.k("logprune"), 0, 9)
        if not ids:
            self._next_prune = now_m + 1.0
            return
        stop_at = time.perf_counter() + PRUNE_BUDGET_S
        for job_id in ids:
            while time.perf_counter() < stop_at:
                done = int(self._prune(keys=[st.k("ev", job_id), st.k("evkeep", job_id), st.k("logprune", "cursor"),
                                             st.k("logprune"), st.k("leader")],
                                       args=[self.token or "", job_id, PRUNE_CHUNK, *sorted(bounds.DROPPED_LOG_TYPES)]))
                if done < 0:
                    raise LostLeadership("the leader lock is another daemon's (pruning logs)")
                if done:
                    break
            else:
                return

    def _keep_finished_within(self, owner: str) -> None:
        """Delete the owner's oldest finished jobs past ``max_finished`` (as ``_expire`` does)."""
        st = self.store
        cap = self.config.limits_for(owner).max_finished
        over = int(st.r.zcard(st.k("done", owner))) - cap
        if over <= 0:
            return
        ids = st.r.zrange(st.k("done", owner), 0, min(over, EXPIRE_BATCH) - 1)  # the rest at the next ends
        jobs = [j for j in st.get_jobs(ids) if j.state.is_terminal]
        ops: list[Op] = [op for j in jobs for op in st.delete_job_ops(j)]
        missing = set(ids) - {j.id for j in jobs}  # deleted meanwhile (or by hand)
        if missing:
            ops.append(["ZREM", st.k("done", owner), *sorted(missing)])
        self._exec(ops)
        log.info("user %s: deleted %d oldest finished jobs to keep within max_finished = %d", owner, len(jobs), cap)
