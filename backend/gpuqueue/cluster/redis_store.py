"""The cluster's job store in Redis: job records, per-job event streams, node heartbeats, the
leader lock, and the daemon's inbox.

The store, not the broker, owns a job's state. Every write that must not come from a stale
process goes through :meth:`RedisStore.exec`, one Lua script that first checks *guards*
(``GET key == value``) and then applies a list of commands atomically:

* the daemon guards with the leader key == its token (a deposed leader's writes are refused);
* a worker guards with ``fence:<job>`` == ``"<attempt>:<node>"`` (a zombie worker holding an
  old attempt number is refused) and with its tail offset (a retried write is not doubled).

Keys (prefix ``gq`` by default)::

    job:<id>            JSON JobRecord              jobs / owner:<name>   ZSETs by created_at
    active              SET of non-terminal ids     ev:<id> / evseq:<id>  event stream, seq counter
    live:<name>         SET of the user's non-terminal ids
    waiting:<name> / waitpool:<pool>   SETs of waiting (queued, retrying, preempted) ids: the
                        queue-depth limits the API checks at submit
    payload:<id>        cell payload (bytes)        result:<id>           pickled results (bytes)
    done:<name>         ZSET of the user's finished ids by end time (``max_finished``)
    inputs:<name>       HASH of the payload sizes of the user's unfinished jobs (``max_inputs_mb``)
    results:<name>      HASH of the user's stored results: id -> "<bytes> <end time>" (``max_results_mb``)
    logs:<name>         HASH of the user's finished jobs whose output is kept: id -> "<bytes of ev:<id>>
                        <end time>" (``max_logs_mb``)
    resultsat:<name> / logsat:<name>   the same ids in a ZSET by end time, and
    resultssum:<name> / logssum:<name>   the total of the hash's bytes: a job's end reads only
                        these and the oldest entries it drops (``KEEP`` / ``UNKEEP`` ops change
                        all three at once; a hash without them, written by an older version, is
                        indexed at its owner's next end: :meth:`RedisStore.kept_set`)
    logprune            ZSET of jobs whose logs were dropped and whose stream still holds them, by
                        the time dropped; logprune:cursor HASH id -> the last entry looked at,
                        evkeep:<id> the stream being copied without them (store_bounds.py)
    fence:<id>          "<attempt>:<node>" while the attempt may run, "<attempt>:settled" after
    claim:<id>:<n>      the worker instance that launched attempt n
    started:<id>:<n> / exit:<id>:<n>   what the worker reported (for a daemon restart)
    tail:<id>:<n>       bytes of events.jsonl already copied
    daemon              STREAM of messages to the daemon; daemon:cursor = last handled id
    reports             STREAM of the workers' reports (starts, exits); reports:cursor
    leader / epoch      the leader lock (token "<epoch>:<uuid>") and the fencing counter
    nodes / hb:<node>   registered nodes, and each node's last heartbeat (JSON)
    ctl:<node>          LIST of stop requests for the node's worker
    config / snapshot / pending / sched_state   published by the daemon
    shared:queue / shared:sweep   the queue's id on the workers' shared root, the sweep's turn
                        (worker_sweep.py)
    shared:used:<name>  HASH of the user's jobs' bytes on the shared root (``max_shared_gb``);
    shared:files:<name> HASH of the same in files (``max_shared_files``)
    shared:job:<id>     HASH of the job's checkpoints' bytes and files there and its owner
                        (shared_usage.py)

A finished job's keys are deleted by the daemon ``--keep-finished`` (default 30 days) after it
ended, or sooner once its owner has more than ``max_finished`` finished jobs; a user's stored
results are kept within ``max_results_mb`` (the daemon: cluster/store_bounds.py) and the
output of their finished jobs within ``max_logs_mb``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..queue.models import Event, JobRecord
from ..queue.states import WAITING_STATES
from . import redis_url

Op = list[Any]
Guard = tuple[str, str]

_EXEC = """
local req = cjson.decode(ARGV[1])
for _, g in ipairs(req.g) do
  local v = redis.call('GET', g[1])
  if (v or '') ~= g[2] then return {0, g[1], v or ''} end
end
local seqs = {}
for _, op in ipairs(req.o) do
  if op[1] == 'EVENT' then
    local s = redis.call('INCR', req.p .. ':evseq:' .. op[2])
    redis.call('XADD', req.p .. ':ev:' .. op[2], s .. '-0', 't', op[3], 'type', op[4], 'data', op[5])
    seqs[#seqs + 1] = s
  elseif op[1] == 'KEEP' or op[1] == 'UNKEEP' then
    -- {KEEP, kind, owner, id, bytes, at} / {UNKEEP, kind, owner, id}: the hash, its ZSET by
    -- time and its total change together
    local h, z, t = req.p .. ':' .. op[2] .. ':' .. op[3], req.p .. ':' .. op[2] .. 'at:' .. op[3],
                    req.p .. ':' .. op[2] .. 'sum:' .. op[3]
    local was = redis.call('HGET', h, op[4])
    if was then
      redis.call('HDEL', h, op[4])
      redis.call('ZREM', z, op[4])
      redis.call('DECRBY', t, tonumber(string.match(was, '^%-?%d+')))
    end
    if op[1] == 'KEEP' then
      redis.call('HSET', h, op[4], op[5] .. ' ' .. op[6])
      redis.call('ZADD', z, op[6], op[4])
      redis.call('INCRBY', t, op[5])
    end
  else
    redis.call(unpack(op))
  end
end
return {1, '', cjson.encode(seqs)}
"""

# A new job in one round trip: the depth limits checked and every key written atomically, so two
# API processes can never both slip past a limit. ARGV: prefix, id, owner, pool, created_at,
# record JSON, event time, event data, daemon message, user limit, pool limit (-1: none),
# payload ('' for none), bytes of payloads the owner's unfinished jobs may hold (-1: no limit).
# ARGV[14]: the hub account (its creation time) the owner's name must still be bound to in
# <prefix>:hubnames ('' for none: names not bound), so that a submit checked before a queue admin's
# release of the name (cluster.hub_names) never lands after it began.
# Returns {1, seq} or {0, 'user'|'pool'|'inputs'|'name', count (bytes for 'inputs')}.
_SUBMIT = """
local p, id, owner, pool = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if ARGV[14] ~= '' and redis.call('HGET', p .. ':hubnames', owner) ~= ARGV[14] then
  return {0, 'name', 0}
end
local ulim, plim, blim = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[13])
if ulim >= 0 then
  local n = redis.call('SCARD', p .. ':waiting:' .. owner)
  if n >= ulim then return {0, 'user', n} end
end
if plim >= 0 then
  local n = redis.call('SCARD', p .. ':waitpool:' .. pool)
  if n >= plim then return {0, 'pool', n} end
end
if ARGV[12] ~= '' then
  if blim >= 0 then
    local used = 0
    for _, v in ipairs(redis.call('HVALS', p .. ':inputs:' .. owner)) do used = used + tonumber(v) end
    if used + #ARGV[12] > blim then return {0, 'inputs', used} end
  end
  redis.call('SET', p .. ':payload:' .. id, ARGV[12])
  redis.call('HSET', p .. ':inputs:' .. owner, id, #ARGV[12])
end
redis.call('SET', p .. ':job:' .. id, ARGV[6])
redis.call('ZADD', p .. ':jobs', ARGV[5], id)
redis.call('ZADD', p .. ':owner:' .. owner, ARGV[5], id)
redis.call('SADD', p .. ':active', id)
redis.call('SADD', p .. ':live:' .. owner, id)
redis.call('SADD', p .. ':waiting:' .. owner, id)
redis.call('SADD', p .. ':waitpool:' .. pool, id)
local s = redis.call('INCR', p .. ':evseq:' .. id)
redis.call('XADD', p .. ':ev:' .. id, s .. '-0', 't', ARGV[7], 'type', 'state', 'data', ARGV[8])
redis.call('XADD', p .. ':daemon', '*', 'm', ARGV[9])
return {1, s}
"""

# A kept set's head (KEYS: its hash, ZSET by time, total; ARGV[4] = 1): its hash's length, the
# ZSET's, the total ('' if none) and ARGV[1]'s entry; then ARGV[3] of its oldest entries from
# ARGV[2] on, as id, "<bytes> <time>" pairs.
_KEPT = """
local out = {}
if ARGV[4] == '1' then
  out = {redis.call('HLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('GET', KEYS[3]) or '',
         redis.call('HGET', KEYS[1], ARGV[1]) or ''}
end
local from = tonumber(ARGV[2])
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], from, from + tonumber(ARGV[3]) - 1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id) or ''
end
return out
"""
_FIRST_PAGE = 16  # a job's end mostly drops one or two: the head brings that many

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LostLeadership(Exception):
    """Another daemon holds the leader lock now: this one must stop writing."""


class Fenced(Exception):
    """A guarded write was refused: the writer is stale (old leader, old attempt)."""

    def __init__(self, key: str, found: str):
        super().__init__(f"write refused: {key} is {found!r}")
        self.key = key
        self.found = found


def connect(url: str, decode: bool = True) -> redis.Redis:
    """A Redis client that rides out short outages (a restart, a failover) by retrying.
    ``url`` may name Sentinels (see redis_url.py): the client then follows the primary."""
    return redis_url.client(
        url,
        decode_responses=decode,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


class RedisStore:
    """Typed access to the cluster's keys. Thread-safe (redis-py pools connections)."""

    def __init__(self, url: str, prefix: str = "gq"):
        self.url = url
        self.p = prefix
        # redis-py types every reply as ``bytes | str`` (or a union of shapes), whatever the
        # client's decode_responses: ``r`` decodes (its replies are str), ``rb`` does not (bytes)
        self.r: Any = connect(url)
        self.rb: Any = connect(url, decode=False)
        self._exec = self.r.register_script(_EXEC)
        self._renew = self.r.register_script(_RENEW)
        self._submit = self.r.register_script(_SUBMIT)
        self._kept = self.r.register_script(_KEPT)

    # -- keys -----------------------------------------------------------------------------
    def k(self, *parts: Any) -> str:
        """``<prefix>:<part>:<part>...``"""
        return ":".join([self.p, *map(str, parts)])

    # -- guarded writes -------------------------------------------------------------------
    def exec(self, ops: Sequence[Op], guards: Iterable[Guard] = ()) -> list[int]:
        """Apply ``ops`` atomically if every guard holds; raise :class:`Fenced` otherwise.
        ``["EVENT", job_id, t, type, data_json]`` appends to the job's stream; other ops are
        Redis commands. Returns the seqs of the appended events."""
        req = {"p": self.p, "g": [list(g) for g in guards], "o": [list(map(_s, op)) for op in ops]}
        res = self._exec(args=[json.dumps(req)])
        if int(res[0]) != 1:
            raise Fenced(res[1], res[2])
        return [int(x) for x in json.loads(res[2])] if res[2] not in ("", "{}") else []

    @staticmethod
    def event_op(job_id: str, type_: str, data: dict[str, Any], t: Optional[float] = None) -> Op:
        """An op appending one event to a job's stream."""
        return ["EVENT", job_id, repr(t or time.time()), type_, json.dumps(data, default=str)]

    def warn_job(self, job_id: str, node: str, message: str, guard: Guard) -> Optional[str]:
        """Tell a job's owner, in its events (``gpuqueue logs``, the cell), what ``node`` has to say
        of the attempt ``guard`` fences (a ``warning``, only while that attempt holds). None, or
        why it could not (the attempt is over, or the store away): the caller logs it."""
        try:
            self.exec([self.event_op(job_id, "warning", {"message": message, "node": node})], guards=[guard])
        except Exception as e:  # noqa: BLE001 - the caller's log has it
            return str(e) or type(e).__name__
        return None

    def job_ops(self, job: JobRecord) -> list[Op]:
        """Ops that save a job record and keep the indexes right. A finished job's cell payload
        is deleted with it: no attempt will read it again, and kept for ``--keep-finished`` (30
        days) it let one user fill Redis by submitting large cells and cancelling them."""
        job.updated_at = time.time()
        return [
            ["SET", self.k("job", job.id), job.model_dump_json(exclude={"pending"})],
            ["ZADD", self.k("jobs"), repr(job.created_at), job.id],
            ["ZADD", self.k("owner", job.owner), repr(job.created_at), job.id],
        ] + self.index_ops(job) + ([["DEL", self.k("payload", job.id)], ["HDEL", self.k("inputs", job.owner), job.id],
                                    ["ZADD", self.k("done", job.owner), repr(job.updated_at), job.id]]
                                   if job.state.is_terminal else [])

    def index_ops(self, job: JobRecord) -> list[Op]:
        """Ops that put a job in (or take it out of) the sets of live and waiting jobs."""
        live = "SREM" if job.state.is_terminal else "SADD"
        waiting = "SADD" if job.state in WAITING_STATES else "SREM"
        return [
            [live, self.k("active"), job.id],
            [live, self.k("live", job.owner), job.id],
            [waiting, self.k("waiting", job.owner), job.id],
            [waiting, self.k("waitpool", job.spec.pool or ""), job.id],
        ]

    def delete_job_ops(self, job: JobRecord) -> list[Op]:
        """Ops that delete a job and everything kept for it (for finished jobs only)."""
        i = job.id
        per_attempt = [self.k(what, i, a.number) for a in job.attempts for what in ("claim", "started", "exit", "tail", "result")]
        return [
            ["DEL", self.k("job", i), self.k("ev", i), self.k("evseq", i), self.k("payload", i),
             self.k("result", i), self.k("fence", i), *per_attempt],
            ["ZREM", self.k("jobs"), i],
            ["ZREM", self.k("owner", job.owner), i],
            ["ZREM", self.k("done", job.owner), i],
            self.unkeep_op("results", job.owner, i),
            self.unkeep_op("logs", job.owner, i),
            ["DEL", self.k("evkeep", i)],
            ["ZREM", self.k("logprune"), i],
            ["HDEL", self.k("logprune", "cursor"), i],
            ["HDEL", self.k("inputs", job.owner), i],
            ["HDEL", self.k("pending"), i],
        ] + self.index_ops(job)  # a finished job's: out of the live and waiting sets

    # -- what finished jobs keep (queue/bounds.py) -----------------------------------------
    @staticmethod
    def keep_op(kind: str, owner: str, job_id: str, nbytes: int, at: float) -> Op:
        """An op that puts ``job_id``'s ``nbytes`` in the owner's kept set ``kind`` ("results" or
        "logs"), replacing what it had there."""
        return ["KEEP", kind, owner, job_id, str(int(nbytes)), repr(at)]

    @staticmethod
    def unkeep_op(kind: str, owner: str, job_id: str) -> Op:
        """An op that takes ``job_id`` out of the owner's kept set ``kind`` (if it is there)."""
        return ["UNKEEP", kind, owner, job_id]

    def kept_set(self, kind: str, owner: str, without: str = "") -> tuple[int, bool, Iterator[tuple[str, int]]]:
        """The owner's kept set ``kind`` without ``without``: its bytes; whether its index (ZSET
        by time, total) agrees with its hash (it does not when an older version wrote the hash
        alone: then :meth:`reindex_ops` first); and its entries oldest first as (id, bytes),
        read a page at a time only as far as the caller goes (ties in time by id, as
        ``bounds.oldest_to_drop``). One round trip for all that and the first page."""
        keys = [self.k(kind, owner), self.k(kind + "at", owner), self.k(kind + "sum", owner)]
        head = self._kept(keys=keys, args=[without or "-", 0, _FIRST_PAGE, 1])
        n, zn, total, mine = int(head[0]), int(head[1]), head[2], head[3]
        held = int(total or 0)
        consistent = n == zn and held >= 0 and (total != "" if n else held == 0)

        def oldest() -> Iterator[tuple[str, int]]:
            rows, start, page = head[4:], 0, _FIRST_PAGE
            while True:
                for job_id, v in zip(rows[::2], rows[1::2]):
                    if v and job_id != without:
                        yield job_id, _bytes(v)
                if len(rows) < 2 * page:
                    return
                start, page = start + page, 64
                rows = self._kept(keys=keys, args=["-", start, page, 0])

        return held - (_bytes(mine) if without and mine else 0), consistent, oldest()

    def reindex_ops(self, kind: str, owner: str) -> list[Op]:
        """Ops that rebuild the owner's ZSET and total for ``kind`` from its hash (one read of the
        whole hash: once per user after an upgrade, or after an older version wrote to it)."""
        h, z, t = self.k(kind, owner), self.k(kind + "at", owner), self.k(kind + "sum", owner)
        entries = self.r.hgetall(h)
        ops: list[Op] = [["DEL", z], ["SET", t, str(sum(_bytes(v) for v in entries.values()))]]
        pairs = [(v.partition(" ")[2] or "0", job_id) for job_id, v in sorted(entries.items())]
        for i in range(0, len(pairs), 500):  # Lua's unpack takes a few thousand values at most
            ops.append(["ZADD", z, *[x for pair in pairs[i : i + 500] for x in pair]])
        return ops

    def submit_job(self, job: JobRecord, payload: Optional[bytes | memoryview], daemon_msg: dict[str, Any],
                   user_limit: Optional[int] = None, pool_limit: Optional[int] = None,
                   inputs_limit: Optional[int] = None, hub_account: Optional[str] = None
                   ) -> Optional[tuple[str, int]]:
        """Store a new queued job (its record, indexes, payload, first ``state`` event and the
        daemon's message) in one atomic round trip, unless the owner already has
        ``user_limit`` waiting jobs or its pool ``pool_limit``, or the payload would bring the
        payloads of the owner's unfinished jobs over ``inputs_limit`` bytes, or the owner's name
        is no longer bound to ``hub_account`` (``cluster.hub_names``; None: not checked). Returns
        None once stored, else ``("user" | "pool", jobs waiting)``, ``("inputs", bytes held)`` or
        ``("name", 0)``."""
        job.updated_at = time.time()
        res = self._submit(args=[
            self.p, job.id, job.owner, job.spec.pool or "", repr(job.created_at),
            job.model_dump_json(exclude={"pending"}), repr(time.time()), '{"state": "queued"}',
            json.dumps(daemon_msg), -1 if user_limit is None else user_limit,
            -1 if pool_limit is None else pool_limit, payload or "",
            -1 if inputs_limit is None else inputs_limit, hub_account or "",
        ])
        if int(res[0]) == 1:
            return None
        return str(res[1]), int(res[2])

    # -- jobs -----------------------------------------------------------------------------
    def get_job(self, job_id: str) -> Optional[JobRecord]:
        """One job record, or None."""
        raw = self.r.get(self.k("job", job_id))
        return JobRecord.model_validate_json(raw) if raw else None

    def get_jobs(self, ids: Sequence[str]) -> list[JobRecord]:
        """Records of ``ids`` that exist, in order."""
        if not ids:
            return []
        out = []
        for i in range(0, len(ids), 1000):
            for raw in self.r.mget([self.k("job", j) for j in ids[i : i + 1000]]):
                if raw:
                    out.append(JobRecord.model_validate_json(raw))
        return out

    def list_jobs(self, owner: Optional[str] = None, limit: int = 500) -> list[JobRecord]:
        """Newest first; one owner's or everyone's."""
        key = self.k("owner", owner) if owner else self.k("jobs")
        return self.get_jobs(self.r.zrevrange(key, 0, limit - 1))

    def live_jobs(self, owner: str) -> list[JobRecord]:
        """One user's non-terminal jobs, oldest first."""
        jobs = self.get_jobs(sorted(self.r.smembers(self.k("live", owner))))
        return sorted(jobs, key=lambda j: j.created_at)

    def active_jobs(self) -> list[JobRecord]:
        """Every job that is not terminal, oldest first."""
        jobs = self.get_jobs(sorted(self.r.smembers(self.k("active"))))
        return sorted(jobs, key=lambda j: j.created_at)

    # -- events ---------------------------------------------------------------------------
    def read_events(self, job_id: str, after: int = 0, limit: int = 10_000) -> list[Event]:
        """Events with seq > ``after``."""
        rows = self.r.xrange(self.k("ev", job_id), f"{after + 1}-0", "+", count=limit)
        return [_event(eid, f) for eid, f in rows]

    def events_data(self, job_id: str, type_: str, most: int, page: int = 10_000
                    ) -> tuple[list[dict[str, Any]], bool]:
        """The data of the job's events of one type, oldest first, among its first ``most``
        events (read in pages, only those of the type decoded: a job's ``checkpoint`` events
        among its output), and whether that was the whole stream."""
        out: list[dict[str, Any]] = []
        after, left = 0, most
        while left > 0:
            want = min(page, left)
            rows = self.r.xrange(self.k("ev", job_id), f"{after + 1}-0", "+", count=want)
            out += [json.loads(f["data"]) for _, f in rows if f.get("type") == type_]
            if len(rows) < want:
                return out, True
            left -= want
            after = int(rows[-1][0].split("-", 1)[0])
        return out, not self.r.xrange(self.k("ev", job_id), f"{after + 1}-0", "+", count=1)

    def last_seq(self, job_id: str) -> int:
        """The newest event's seq (0 if none)."""
        return int(self.r.get(self.k("evseq", job_id)) or 0)

    # -- daemon inbox ---------------------------------------------------------------------
    def report_op(self, msg: dict[str, Any]) -> Op:
        """An op that queues a worker's report (a start, an exit) for the daemon. Reports have a
        stream of their own, which the daemon reads first."""
        return ["XADD", self.k("reports"), "*", "m", json.dumps(msg)]

    def tell_daemon(self, msg: dict[str, Any]) -> None:
        """Queue a message for the daemon (unguarded)."""
        self.r.xadd(self.k("daemon"), {"m": json.dumps(msg)})

    # -- published by the daemon ----------------------------------------------------------
    def get_json(self, *key: Any) -> Any:
        """The JSON value at ``k(*key)``, or None."""
        raw = self.r.get(self.k(*key))
        return json.loads(raw) if raw else None

    # -- leadership -----------------------------------------------------------------------
    def try_lead(self, owner: str, ttl_ms: int) -> Optional[str]:
        """Take the leader lock if free; returns the token ``"<epoch>:<owner>"`` or None."""
        if self.r.exists(self.k("leader")):
            return None
        epoch = self.r.incr(self.k("epoch"))
        token = f"{epoch}:{owner}"
        if self.r.set(self.k("leader"), token, nx=True, px=ttl_ms):
            return token
        return None

    def renew_lead(self, token: str, ttl_ms: int) -> bool:
        """Extend the lock if it is still ours."""
        return bool(self._renew(keys=[self.k("leader")], args=[token, ttl_ms]))

    def close(self) -> None:
        """Close the connection pools."""
        self.r.close()
        self.rb.close()


def _s(v: Any) -> Any:
    return v if isinstance(v, str) else (repr(v) if isinstance(v, float) else str(v))


def _bytes(kept: str) -> int:
    """The bytes of a kept-set hash value ``"<bytes> <end time>"``."""
    return int(kept.partition(" ")[0] or 0)


def _event(eid: str, f: dict[str, str]) -> Event:
    return Event(seq=int(eid.split("-", 1)[0]), time=float(f["t"]), type=f["type"], data=json.loads(f["data"]))


