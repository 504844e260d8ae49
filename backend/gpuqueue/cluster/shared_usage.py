"""What each user's jobs' checkpoints take on the workers' shared root (``--shared-dir``), counted
in the store across all workers: bytes within the user's ``max_shared_gb`` and files within their
``max_shared_files`` (queue config, user limits).

``gpuqueue worker --shared-max-gb`` bounds one attempt's checkpoints; this bounds all of a
user's: the jobs that failed and left their checkpoints there, the many jobs that each take
their own. The file count bounds what bytes cannot: empty or tiny files, each an inode (or an
object) of the shared root, which a user could otherwise make by the billion within the bytes.
Keys (``shared:`` as the sweep's own, which the workers' Redis user may write)::

    shared:job:<id>     HASH: ``owner`` -> the job's owner; ``<name>/step-N`` -> ``BYTES/FILES``
                        of that checkpoint of the job on the root (``BYTES`` alone: counted by a
                        version before files were, as no files)
    shared:used:<name>  HASH of the user's jobs with checkpoints on the root: id -> their bytes,
                        and ``total`` -> the sum (a job id starts with ``j-``)
    shared:files:<name> HASH of the same, in files

A push takes a checkpoint's bytes and files before it copies it (:meth:`UserShare.take`: one Lua
script that reads the user's totals and refuses past either bound, so the workers of one user's
jobs cannot all pass it at once), and gives back those it deleted from the root (rotated away);
the sweep that deletes a job's folder gives back all of it (:meth:`SharedUsage.drop_job`).
Counted by the files' sizes, as the per-attempt bound is; a checkpoint's files are all it holds,
files and folders, its marker included (an empty folder counts, though it is not copied). The
bounds are read from the config the daemon publishes (``config``); before it publishes one, the
defaults hold.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Optional, Sequence

from ..queue.config import GROWING, QueueConfig, UserLimits
from .redis_store import RedisStore
from .shared_root import UserRefusal

log = logging.getLogger("gpuqueue.worker")

# A checkpoint's count in the job's hash: "BYTES/FILES", or "BYTES" (counted before files were)
_COUNTS = """
local function counts(v)
  if not v then return '0', '0' end
  local b, f = string.match(v, '^(%d+)/(%d+)$')
  if b then return b, f end
  return v, '0'
end
"""

# KEYS: the job's hash, its owner's bytes and files; ARGV: owner, job id, checkpoint, its bytes,
# its files, the owner's bounds in bytes and in files (0: none), then the job's local checkpoints
# (its root's others of the same runs are rotated away after the copy: not held against it).
# Returns {1, the owner's bytes now, files now} (taken) or {0, the owner's bytes, files, 1 if
# refused for the files else 0} (refused)
_TAKE = _COUNTS + """
local ob, of = counts(redis.call('HGET', KEYS[1], ARGV[3]))
local used = tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
local nused = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
local now = used - tonumber(ob) + tonumber(ARGV[4])
local nnow = nused - tonumber(of) + tonumber(ARGV[5])
local limit, nlimit = tonumber(ARGV[6]), tonumber(ARGV[7])
local over = limit > 0 and now > limit and now > used
local nover = nlimit > 0 and nnow > nlimit and nnow > nused
if over or nover then
  local keep, runs = {}, {}
  for i = 8, #ARGV do
    keep[ARGV[i]] = true
    runs[string.match(ARGV[i], '^(.*)/[^/]*$') or ''] = true
  end
  local leaving, nleaving = 0, 0
  local held = redis.call('HGETALL', KEYS[1])
  for i = 1, #held, 2 do
    local f = held[i]
    if f ~= 'owner' and f ~= ARGV[3] and not keep[f] and runs[string.match(f, '^(.*)/[^/]*$') or ''] then
      local b, n = counts(held[i + 1])
      leaving, nleaving = leaving + tonumber(b), nleaving + tonumber(n)
    end
  end
  if over and now - leaving > limit then return {0, used, nused, 0} end
  if nover and nnow - nleaving > nlimit then return {0, used, nused, 1} end
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], ARGV[3], ARGV[4] .. '/' .. ARGV[5])
for _, f in ipairs({ARGV[2], 'total'}) do
  redis.call('HINCRBY', KEYS[2], f, ARGV[4])
  if ob ~= '0' then redis.call('HINCRBY', KEYS[2], f, '-' .. ob) end
  redis.call('HINCRBY', KEYS[3], f, ARGV[5])
  if of ~= '0' then redis.call('HINCRBY', KEYS[3], f, '-' .. of) end
end
return {1, now, nnow}
"""

# KEYS: the job's hash, its owner's bytes and files; ARGV: job id, the checkpoints deleted from the root
_GIVE = _COUNTS + """
for i = 2, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    redis.call('HDEL', KEYS[1], ARGV[i])
    local b, n = counts(old)
    for k, v in ipairs({b, n}) do
      if v ~= '0' then
        redis.call('HINCRBY', KEYS[k + 1], 'total', '-' .. v)
        if redis.call('HINCRBY', KEYS[k + 1], ARGV[1], '-' .. v) <= 0 then redis.call('HDEL', KEYS[k + 1], ARGV[1]) end
      end
    end
  end
end
for k = 1, 3 do
  if redis.call('HLEN', KEYS[k]) <= 1 then redis.call('DEL', KEYS[k]) end
end
return 1
"""

# KEYS: the job's hash, its owner's bytes and files; ARGV: job id. The job's folder is gone from the root
_DROP = """
for k = 2, 3 do
  local held = redis.call('HGET', KEYS[k], ARGV[1])
  if held then
    redis.call('HDEL', KEYS[k], ARGV[1])
    redis.call('HINCRBY', KEYS[k], 'total', '-' .. held)
    if redis.call('HLEN', KEYS[k]) <= 1 then redis.call('DEL', KEYS[k]) end
  end
end
redis.call('DEL', KEYS[1])
return 1
"""

_DEFAULT = UserLimits()
_config_lock = threading.Lock()
_config: tuple[Optional[str], Optional[QueueConfig]] = (None, None)  # the last published config read


def user_limits(store: RedisStore, user: str) -> UserLimits:
    """The user's limits in the config the daemon published (parsed again only when it
    changed); the defaults before there is one, or where it does not parse (the daemon's
    problem: the API says so)."""
    global _config
    raw = store.r.get(store.k("config"))
    with _config_lock:
        seen, cfg = _config
        if raw != seen:
            try:
                cfg = QueueConfig.model_validate(json.loads(raw), context=GROWING) if raw else None
            except ValueError as e:
                log.warning("the published queue config does not parse (%s): max_shared_gb and max_shared_files "
                            "are the defaults", e)
                cfg = None
            _config = (raw, cfg)
    return cfg.limits_for(user) if cfg is not None else _DEFAULT


class SharedUsage:
    """The users' bytes and files on the shared root, in ``store``."""

    def __init__(self, store: RedisStore):
        self.store = store
        self._take = store.r.register_script(_TAKE)
        self._give = store.r.register_script(_GIVE)
        self._drop = store.r.register_script(_DROP)

    def used(self, user: str) -> int:
        """The bytes the user's jobs' checkpoints take on the root."""
        return int(self.store.r.hget(self.store.k("shared", "used", user), "total") or 0)

    def files(self, user: str) -> int:
        """The files the user's jobs' checkpoints hold on the root."""
        return int(self.store.r.hget(self.store.k("shared", "files", user), "total") or 0)

    def for_job(self, job_id: str, owner: str) -> "UserShare":
        """The accounting of ``job_id``'s pushes, against ``owner``'s bounds."""
        return UserShare(self, job_id, owner)

    def drop_job(self, job_id: str) -> None:
        """The job's folder was deleted from the root (the sweep): none of it counts any more."""
        key = self.store.k("shared", "job", job_id)
        owner = self.store.r.hget(key, "owner")
        if owner is not None:
            self._drop(keys=[key, self.store.k("shared", "used", owner), self.store.k("shared", "files", owner)],
                       args=[job_id])


class UserShare:
    """One job's checkpoints in its owner's counts (what :meth:`SharedRoot.push` takes a
    ``quota`` for)."""

    def __init__(self, usage: SharedUsage, job_id: str, owner: str):
        self.usage, self.job_id, self.owner = usage, job_id, owner
        s = usage.store
        self._keys = [s.k("shared", "job", job_id), s.k("shared", "used", owner), s.k("shared", "files", owner)]

    def take(self, checkpoint: str, size: int, files: int, keep: Sequence[str] = (),
             bound: bool = True) -> Optional[UserRefusal]:
        """Count ``size`` bytes and ``files`` files for the job's ``checkpoint`` (``name/step-N``;
        one counted already is replaced) unless with them the owner's jobs would take more than
        either bound, not holding against it the job's counted checkpoints of the runs of
        ``keep`` (the job's local ones) that are not in it: the push rotates those away after the
        copy. ``bound`` False: counted whatever (one the root holds already). None: counted;
        else why not (not to be copied)."""
        limit = limit_files = 0
        if bound:
            limits = user_limits(self.usage.store, self.owner)
            limit, limit_files = int(limits.max_shared_gb * 1e9), limits.max_shared_files
        got = self.usage._take(keys=self._keys, args=[self.owner, self.job_id, checkpoint, size, files, limit,
                                                       limit_files, *keep])
        if int(got[0]) == 1:
            return None
        return UserRefusal(checkpoint, size, files, int(got[1]), int(got[2]), limit, limit_files, int(got[3]) == 1)

    def give(self, checkpoints: list[str]) -> None:
        """``checkpoints`` (``name/step-N``) were deleted from the root: they count no more."""
        if checkpoints:
            self.usage._give(keys=self._keys, args=[self.job_id, *checkpoints])
