"""What each user's jobs' checkpoints take on the workers' shared root (``--shared-dir``), counted
in the store across all workers, within the user's ``max_shared_gb`` (queue config, user limits).

``gpuqueue worker --shared-max-gb`` bounds one attempt's checkpoints; this bounds all of a
user's: the jobs that failed and left their checkpoints there, the many jobs that each take
their own. Keys (``shared:`` as the sweep's own, which the workers' Redis user may write)::

    shared:job:<id>     HASH: ``owner`` -> the job's owner; ``<name>/step-N`` -> the bytes of
                        that checkpoint of the job on the root
    shared:used:<name>  HASH of the user's jobs with checkpoints on the root: id -> their bytes,
                        and ``total`` -> the sum (a job id starts with ``j-``)

A push takes a checkpoint's bytes before it copies it (:meth:`UserShare.take`: one Lua script
that reads the user's total and refuses past the bound, so the workers of one user's jobs cannot
all pass it at once), and gives back those it deleted from the root (rotated away); the sweep
that deletes a job's folder gives back all of it (:meth:`SharedUsage.drop_job`). Counted by the
files' sizes, as the per-attempt bound is. The bound is read from the config the daemon publishes
(``config``); before it publishes one, the default holds.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Optional, Sequence

from ..queue.config import GROWING, QueueConfig, UserLimits
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.worker")

# KEYS: the job's hash, its owner's; ARGV: owner, job id, checkpoint, its bytes, the owner's bound
# in bytes (0: none), then the job's local checkpoints (its root's others of the same runs are
# rotated away after the copy: not held against it). Returns {1, the owner's bytes now} (taken)
# or {0, the owner's bytes} (refused)
_TAKE = """
local old = redis.call('HGET', KEYS[1], ARGV[3]) or '0'
local size = tonumber(ARGV[4])
local used = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local now = used - tonumber(old) + size
local limit = tonumber(ARGV[5])
if limit > 0 and now > limit and now > used then
  local keep, runs = {}, {}
  for i = 6, #ARGV do
    keep[ARGV[i]] = true
    runs[string.match(ARGV[i], '^(.*)/[^/]*$') or ''] = true
  end
  local leaving = 0
  local held = redis.call('HGETALL', KEYS[1])
  for i = 1, #held, 2 do
    local f = held[i]
    if f ~= 'owner' and f ~= ARGV[3] and not keep[f] and runs[string.match(f, '^(.*)/[^/]*$') or ''] then
      leaving = leaving + tonumber(held[i + 1])
    end
  end
  if now - leaving > limit then return {0, used} end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], ARGV[3], ARGV[4])
for _, f in ipairs({ARGV[2], 'total'}) do
  redis.call('HINCRBY', KEYS[2], f, ARGV[4])
  if old ~= '0' then redis.call('HINCRBY', KEYS[2], f, '-' .. old) end
end
return {1, now}
"""

# KEYS: the job's hash, its owner's; ARGV: job id, the checkpoints deleted from the root
_GIVE = """
for i = 2, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    redis.call('HDEL', KEYS[1], ARGV[i])
    if old ~= '0' then
      redis.call('HINCRBY', KEYS[2], 'total', '-' .. old)
      if redis.call('HINCRBY', KEYS[2], ARGV[1], '-' .. old) <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
    end
  end
end
if redis.call('HLEN', KEYS[1]) <= 1 then redis.call('DEL', KEYS[1]) end
if redis.call('HLEN', KEYS[2]) <= 1 then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: the job's hash, its owner's; ARGV: job id. The job's folder is gone from the root
_DROP = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HINCRBY', KEYS[2], 'total', '-' .. held)
  if redis.call('HLEN', KEYS[2]) <= 1 then redis.call('DEL', KEYS[2]) end
end
redis.call('DEL', KEYS[1])
return 1
"""

_DEFAULT = UserLimits()
_config_lock = threading.Lock()
_config: tuple[Optional[str], Optional[QueueConfig]] = (None, None)  # the last published config read


def limit_bytes(store: RedisStore, user: str) -> int:
    """The user's ``max_shared_gb`` in bytes, from the config the daemon published (parsed again
    only when it changed); the default before there is one, or where it does not parse (the
    daemon's problem: the API says so)."""
    global _config
    raw = store.r.get(store.k("config"))
    with _config_lock:
        seen, cfg = _config
        if raw != seen:
            try:
                cfg = QueueConfig.model_validate(json.loads(raw), context=GROWING) if raw else None
            except ValueError as e:
                log.warning("the published queue config does not parse (%s): max_shared_gb is the default", e)
                cfg = None
            _config = (raw, cfg)
    limits = cfg.limits_for(user) if cfg is not None else _DEFAULT
    return int(limits.max_shared_gb * 1e9)


class SharedUsage:
    """The users' bytes on the shared root, in ``store``."""

    def __init__(self, store: RedisStore):
        self.store = store
        self._take = store.r.register_script(_TAKE)
        self._give = store.r.register_script(_GIVE)
        self._drop = store.r.register_script(_DROP)

    def used(self, user: str) -> int:
        """The bytes the user's jobs' checkpoints take on the root."""
        return int(self.store.r.hget(self.store.k("shared", "used", user), "total") or 0)

    def for_job(self, job_id: str, owner: str) -> "UserShare":
        """The accounting of ``job_id``'s pushes, against ``owner``'s bound."""
        return UserShare(self, job_id, owner)

    def drop_job(self, job_id: str) -> None:
        """The job's folder was deleted from the root (the sweep): none of it counts any more."""
        key = self.store.k("shared", "job", job_id)
        owner = self.store.r.hget(key, "owner")
        if owner is not None:
            self._drop(keys=[key, self.store.k("shared", "used", owner)], args=[job_id])


class UserShare:
    """One job's checkpoints in its owner's count (what :meth:`SharedRoot.push` takes a
    ``quota`` for). ``limit``: the owner's bound at the last :meth:`take`, in bytes."""

    def __init__(self, usage: SharedUsage, job_id: str, owner: str):
        self.usage, self.job_id, self.owner = usage, job_id, owner
        self.limit = 0
        s = usage.store
        self._keys = [s.k("shared", "job", job_id), s.k("shared", "used", owner)]

    def take(self, checkpoint: str, size: int, keep: Sequence[str] = (), bound: bool = True) -> Optional[int]:
        """Count ``size`` bytes for the job's ``checkpoint`` (``name/step-N``; one counted already
        is replaced) unless with them the owner's jobs would take more than the bound, not
        holding against it the job's counted checkpoints of the runs of ``keep`` (the job's local
        ones) that are not in it: the push rotates those away after the copy. ``bound`` False:
        counted whatever (one the root holds already). None: counted; else the bytes the owner's
        checkpoints take there now (not counted: not to be copied)."""
        if bound:
            self.limit = limit_bytes(self.usage.store, self.owner)
        ok, used = self.usage._take(keys=self._keys, args=[self.owner, self.job_id, checkpoint, size,
                                                            self.limit if bound else 0, *keep])
        return None if int(ok) == 1 else int(used)

    def give(self, checkpoints: list[str]) -> None:
        """``checkpoints`` (``name/step-N``) were deleted from the root: they count no more."""
        if checkpoints:
            self.usage._give(keys=self._keys, args=[self.job_id, *checkpoints])
