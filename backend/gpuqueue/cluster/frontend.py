"""The queue's verbs over the Redis store: what the API service delegates to.

Same verbs and errors as the embedded ``QueueService``. Stateless: several API services may run
side by side. It writes only new job records and their payloads; every other change (cancel,
preempt) is a message to the scheduler daemon, which owns job state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Iterator, Optional

import redis.asyncio as aioredis
from pydantic import ValidationError

from ..observability import gpumap
from ..queue import bounds, ckptref
from ..queue.config import GROWING, QueueConfig, format_validation_error
from ..queue.errors import Conflict, Forbidden, Gone, NotFound, Rejected, Unavailable
from ..queue.models import Event, JobRecord, JobSpec, SubmitRequest, new_job_id
from ..queue.ratelimit import RedisBuckets, SubmitLimiter
from ..scheduler.admission import inadmissible, over_cap
from ..queue.verbs import Caller
from ..queue.states import LIVE_STATES, WAITING_STATES, JobState
from ..queue.lifecycle import (check_deletable, decode_payload, deleted_answer, job_request, results_for_owner_only,
                               same_cell_job, with_defaults)
from ..queue.text import PREEMPT_IS_FOR_ADMINS, count
from . import redis_url
from .hub_names import released_message as hub_names_released
from .reads import ReadGate
from .redis_store import Fenced, RedisStore, _event

log = logging.getLogger("gpuqueue.api")
CONFIG_REFRESH_S = 2.0
CONFIG_PROBLEM = ("the scheduler daemon published a queue config this API service cannot read ({}); "
                  "nothing was changed: the admin must check the daemon (its --config, and that the "
                  "daemon and the API run the same gpuqueue version)")
INLINE_PAYLOAD_BYTES = 256 * 1024  # larger payloads go to Redis from a thread
RESUME_CHECK_EVENTS = 100_000
"""The most events of a job a submit ``--resume-from`` that job reads to check its checkpoints;
past them the worker checks them at start, against the shared root (the owner is checked always)."""
# the limits before any scheduler has published its config: those of a config that sets none
PRE_CONFIG = QueueConfig.model_validate({"pools": {"default": {"nodes": {}}}}, context=GROWING)


def read_published_config(raw: Optional[str]) -> Optional[QueueConfig]:
    """The config the daemon published (None when there is none yet). A config that does not
    parse or validate is the daemon's problem, not the caller's: Unavailable (503) naming it."""
    if not raw:
        return None
    try:
        return QueueConfig.model_validate(json.loads(raw), context=GROWING)
    except ValueError as e:  # JSONDecodeError and pydantic's ValidationError are ValueErrors
        why = format_validation_error(e) if isinstance(e, ValidationError) else f"not JSON: {e}"
        log.error("the published config is unreadable: %s", why)
        raise Unavailable(CONFIG_PROBLEM.format(why)) from None


class ClusterFrontend:
    """Queue verbs for one API process. The reads (list, show, events, results, the summary, a
    follow's replay) run the blocking client in the threads of ``reads``
    (``gpuqueue.cluster.reads``: a page of events is 0.15 s of work, which must not hold the
    event loop every user shares); ``follow`` blocks on the event stream with an asyncio client.
    Submits, cancels and preempts write from the loop (sub-millisecond on a LAN; a large payload
    from a thread)."""

    def __init__(self, store: RedisStore, max_payload_bytes: int = 64 * 1024 * 1024, wait_s: float = 3.0,
                 reads: Optional[ReadGate] = None):
        self.store = store
        self.reads = reads or ReadGate()
        self.max_payload_bytes = max_payload_bytes
        self.wait_s = wait_s
        self._config: Optional[QueueConfig] = None
        self._config_at = 0.0
        self._aio: Any = None  # a decoding redis.asyncio client (see RedisStore.r on redis-py's reply types)
        # per-user submit buckets, shared by every API process through Redis
        self.limiter = SubmitLimiter(RedisBuckets(store.r, store.k("rate")))

    # -- config (published by the daemon) -------------------------------------------------
    def config(self) -> Optional[QueueConfig]:
        """The daemon's effective config, cached for a moment (none yet: asked again each time,
        so that the first config a scheduler publishes holds at once)."""
        now = time.monotonic()
        if self._config is None or now - self._config_at > CONFIG_REFRESH_S:
            self._config = read_published_config(self.store.r.get(self.store.k("config")))
            self._config_at = now
        return self._config

    # -- verbs ----------------------------------------------------------------------------
    async def submit(self, caller: Caller, req: SubmitRequest) -> tuple[JobRecord, bool]:
        """Queue a job (or find the same cell's active job). Returns (job, attached).
        A large payload is sent to Redis from a thread, so that it does not hold up the event
        loop; a small job is written at once (sub-millisecond)."""
        ref = ckptref.parse(req.spec.resume_from)
        if ref is not None:  # --resume-from JOB_ID: the caller's own job, with that checkpoint (reads its
            async with self.reads.admit(caller.name):  # whole event stream: one of the caller's bounded reads,
                await self.reads.run(self._check_resume, caller, ref)  # 429 past them, as a page of events
        if len(req._payload or req.payload_b64 or b"") > INLINE_PAYLOAD_BYTES:
            return await asyncio.to_thread(self._submit, caller, req)
        return self._submit(caller, req)

    def _submit(self, caller: Caller, req: SubmitRequest) -> tuple[JobRecord, bool]:
        """``submit``, blocking. One Redis round trip for a new job: the record, its indexes,
        its payload, its first event and the daemon's message are written by one script,
        which also refuses the job if the user's (``max_queued``) or the pool's queue is full
        at that moment."""
        attached = same_cell_job(req, self._iter_live(caller.name))  # reads only for a cell re-attach
        if attached is not None:
            return self._with_pending(attached), True
        payload = decode_payload(req, self.max_payload_bytes, where="cluster's ")
        spec = req.spec
        cfg = self.config()
        spec = self._with_defaults(spec, cfg)
        job = JobRecord(id=new_job_id(), owner=caller.name, spec=spec)
        if cfg is not None:
            job.group = cfg.group_of(caller.name, caller.hub_groups) or ""
            request = job_request(job, cfg)
            # what the scheduler would refuse at once: a job that can never run, or one asking more
            # GPUs than a cap lets one of the user's jobs hold (it would fail as "rejected: ...")
            why = inadmissible(request, cfg) or over_cap(request, cfg, job.group or None)
            if why:
                raise Rejected(why)
            user_limit = cfg.limits_for(caller.name).max_queued
            pool_limit = cfg.pools[spec.pool or cfg.default_pool].max_queued  # with_defaults checked it
        else:  # no scheduler has published its config yet: the defaults of one hold meanwhile
            if caller.hub_groups:  # no config to place the user in a group yet: the scheduler will
                job.hub_groups = list(caller.hub_groups)
            user_limit, pool_limit = PRE_CONFIG.defaults.max_queued, PRE_CONFIG.pools["default"].max_queued
        limits = cfg or PRE_CONFIG
        inputs_mb = limits.limits_for(caller.name).max_inputs_mb
        # last: a refused request costs no token
        self.limiter.check(caller.name, caller.admin, limits, caller.hub_groups)
        view = memoryview(payload) if payload is not None else None  # redis-py takes no mmap
        try:
            full = self.store.submit_job(job, view, {"op": "submit", "job": job.id}, user_limit, pool_limit,
                                         int(inputs_mb * 1e6), caller.hub_account)
        finally:
            if view is not None:
                try:
                    view.release()
                except BufferError:  # still held by the client: freed with it
                    pass
        if full is not None:
            which, n = full
            # a refused submit costs no token
            self.limiter.refund(caller.name, caller.admin, limits, caller.hub_groups)
            if which == "name":  # released (or being released) since this request was checked
                raise Forbidden(hub_names_released(caller.name))
            if which == "inputs":
                raise Rejected(bounds.inputs_over_limit(n, len(payload) if payload is not None else 0, inputs_mb))
            if which == "user":
                raise Rejected(f"you have {count(n, 'queued job')}, the limit (max_queued) is {user_limit}; "
                               f"wait for some to start or cancel some")
            pool = f"pool {spec.pool!r}" if spec.pool else "the default pool"  # None: no config yet to name it
            raise Rejected(f"{pool} queue is full ({n} jobs, limit max_queued = {pool_limit}); "
                           f"try again later or use another pool")
        return job, False

    def _check_resume(self, caller: Caller, ref: ckptref.Ref) -> None:
        """Refuse a reference to a job that is not the caller's, or to a checkpoint its events do
        not list as kept (what ``%gpuqueue checkpoints`` lists; among its first
        ``RESUME_CHECK_EVENTS`` events: past them the worker's check at start is the one). The
        worker that starts the job copies it from the shared root (``shared_resume.py``)."""
        source = self.store.get_job(ref.job)
        try:
            ckptref.check_owner(ref, source.owner if source else None, caller.name)
            checkpoints, whole = self.store.events_data(ref.job, "checkpoint", RESUME_CHECK_EVENTS)
            if whole:
                ckptref.choose(ref, ckptref.found_in(checkpoints))
        except ckptref.RefError as e:
            raise Rejected(str(e)) from None

    def _with_defaults(self, spec: JobSpec, cfg: Optional[QueueConfig]) -> JobSpec:
        if cfg is None:  # no daemon has published its config yet: it fills in the defaults later
            return spec  # (``pool`` None: the config's default pool, whatever its name)
        return with_defaults(spec, cfg)

    async def list_jobs(self, caller: Caller, all_users: bool = False, limit: int = 500) -> list[JobRecord]:
        """The caller's jobs (an admin's ``all_users`` lists everyone's), newest first."""
        return await self.reads.run(self._list_jobs, caller, all_users, limit)

    def _list_jobs(self, caller: Caller, all_users: bool, limit: int) -> list[JobRecord]:
        owner = None if (all_users and caller.admin) else caller.name
        return self._with_pending_many(self.store.list_jobs(owner, limit))

    async def get_job(self, caller: Caller, job_id: str) -> JobRecord:
        """One job the caller may see; NotFound otherwise (never says it exists)."""
        return await self.reads.run(self._get_job, caller, job_id)

    def _get_job(self, caller: Caller, job_id: str) -> JobRecord:
        """:meth:`get_job`, blocking."""
        job = self.store.get_job(job_id)
        if job is None or (job.owner != caller.name and not caller.admin):
            raise NotFound(f"no job {job_id!r} (see `gpuqueue ls` for yours)")
        return self._with_pending(job)

    async def cancel(self, caller: Caller, job_id: str) -> JobRecord:
        """Ask the daemon to cancel; returns the record once it has acted (or after a moment)."""
        job = self._get_job(caller, job_id)
        if job.state.is_terminal:
            return job
        self.store.tell_daemon({"op": "cancel", "job": job_id, "by": caller.name})
        return await self._wait(caller, job_id, lambda j: j.state.is_terminal or bool(j.current_attempt and j.current_attempt.stop_requested))

    async def delete_job(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """Delete a finished job (its owner's request, or an admin's) and what the store keeps for
        it, off the event loop (:meth:`_delete_job`)."""
        return await asyncio.to_thread(self._delete_job, caller, job_id)

    def _delete_job(self, caller: Caller, job_id: str) -> dict[str, Any]:
        """:meth:`delete_job`, blocking. The ops are ``RedisStore.delete_job_ops`` (as the daemon's
        ``--keep-finished`` and ``release-name`` delete jobs): record, events, payload, results,
        attempt keys and fence, and the job's entries in its owner's indexes and kept sets
        (``max_results_mb``, ``max_logs_mb``, ``max_finished``, ``max_inputs_mb``), in one write
        guarded by the record as it was checked (a record that changed meanwhile is not deleted).
        Its folder on the workers' shared root goes at their next shared sweep, which also takes
        its checkpoints out of its owner's ``max_shared_gb`` count (``worker_sweep.py``)."""
        key = self.store.k("job", job_id)
        raw = self.store.r.get(key)
        job = JobRecord.model_validate_json(raw) if raw else None
        if job is None or (job.owner != caller.name and not caller.admin):
            raise NotFound(f"no job {job_id!r} (see `gpuqueue ls` for yours)")
        check_deletable(job, self._live(job.owner))
        try:
            self.store.exec(self.store.delete_job_ops(job), guards=[(key, raw)])
        except Fenced:
            raise Conflict(f"job {job_id} changed while it was being deleted: nothing was deleted; "
                           f"try again (gpuqueue rm {job_id})") from None
        log.info("job %s deleted by %s", job_id, caller.name)
        return deleted_answer(job, ["record", "events", "logs", "results", "payload"],
                              note="its checkpoints on the workers' shared root (if any) are deleted at the workers' "
                                   "next shared sweep (gpuqueue worker --shared-sweep), and stop counting against "
                                   "max_shared_gb then; its folders on the nodes' own disks at their next local "
                                   "sweep (--local-sweep)")

    async def preempt(self, caller: Caller, job_id: str) -> JobRecord:
        """Admin: preempt a running job now (it checkpoints, stops and is queued again)."""
        if not caller.admin:
            raise Forbidden(PREEMPT_IS_FOR_ADMINS)
        job = self._get_job(caller, job_id)
        if job.state not in (JobState.STARTING, JobState.RUNNING):
            raise Conflict(f"job {job_id} is {job.state.value}, not running: nothing to preempt")
        self.store.tell_daemon({"op": "preempt", "job": job_id, "by": caller.name})
        return await self._wait(caller, job_id, lambda j: not j.state.is_active or bool(j.current_attempt and j.current_attempt.stop_requested))

    async def _wait(self, caller: Caller, job_id: str, done: Any) -> JobRecord:
        """The job once the daemon has acted on our message (or as it is after ``wait_s``)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            job = self._get_job(caller, job_id)
            if done(job) or time.monotonic() > deadline:
                return job
            await asyncio.sleep(0.02)

    async def events(self, caller: Caller, job_id: str, after: int = 0, limit: int = 10_000) -> list[Event]:
        """The job's events with seq > ``after`` (for a job whose logs were dropped, without its
        output records, and read from the start, the notice that says so)."""
        return await self.reads.run(self._events, caller, job_id, after, limit)

    def _events(self, caller: Caller, job_id: str, after: int, limit: int) -> list[Event]:
        job = self._get_job(caller, job_id)
        return bounds.visible_events(job, self.store.read_events(job_id, after, limit), after == 0)

    async def events_page(self, caller: Caller, job_id: str, after: int) -> tuple[list[Event], Optional[int]]:
        """A page of the job's events after ``after`` (``bounds.EVENTS_PAGE`` at most; a job whose
        logs were dropped: ``bounds.dropped_page``, which reads at most that many stored
        records) and where the next page starts when this one stopped short of the end (None
        when it did not): the REST answer's ``events`` and ``next``."""
        return await self.reads.run(self._events_page, caller, job_id, after)

    def _events_page(self, caller: Caller, job_id: str, after: int) -> tuple[list[Event], Optional[int]]:
        job = self._get_job(caller, job_id)
        if job.logs_dropped:  # its output rows may still be stored: walk past them, a bounded read
            page = bounds.dropped_page(lambda a, n: self.store.read_events(job_id, a, n), job, after)
            return page.events, page.next_after
        return self.store.read_events(job_id, after, bounds.EVENTS_PAGE), None

    async def follow(self, caller: Caller, job_id: str, after: int = 0, keepalive_s: float = 15.0) -> AsyncIterator[Optional[Event]]:
        """Replay events after ``after``, then yield new ones live until the job ends.
        Yields None as a keep-alive when nothing happened for ``keepalive_s``.

        The job's end (its record's terminal state and its last ``state`` event, written in one
        atomic ``RedisStore.exec``) may land between a read of the stream that found nothing
        new and the read of the record that finds it ended: the stream is read once more after
        that, so the follow never stops short of the job's last events (it did: a `gpuqueue
        logs -f` ended without its final ``[gpuqueue] succeeded`` line)."""
        async with self.reads.slot(caller.name):
            job0 = await self.reads.run(self._get_job, caller, job_id)
        if self._aio is None:
            self._aio = redis_url.async_client(self.store.url, decode_responses=True)
        key = self.store.k("ev", job_id)
        from_start = after == 0
        ended = False  # the record says the job ended: what its stream holds now is all of it
        while True:
            async with self.reads.slot(caller.name):  # a batch at a time, as one of the user's reads
                batch = await self.reads.run(self.store.read_events, job_id, after, 2000)
            for ev in bounds.visible_events(job0, batch, from_start):
                yield ev
            from_start = False
            if batch:
                after = batch[-1].seq
                continue
            if ended:
                return
            async with self.reads.slot(caller.name):
                job = await self.reads.run(self.store.get_job, job_id)
            if job is None:
                return
            if job.state.is_terminal:
                ended = True  # its end may have come after the read above: read the stream once more
                continue
            try:
                rows = await self._aio.xread({key: f"{after}-0"}, count=2000, block=int(keepalive_s * 1000))
            except (aioredis.ConnectionError, aioredis.TimeoutError):
                await asyncio.sleep(0.5)
                continue
            if not rows:
                yield None
                continue
            for eid, fields in rows[0][1]:
                ev = _event(eid, fields)
                after = ev.seq
                yield ev

    async def result(self, caller: Caller, job_id: str) -> bytes:
        """The pickled names a succeeded cell job assigned."""
        return await self.reads.run(self._result, caller, job_id)

    def _result(self, caller: Caller, job_id: str) -> bytes:
        job = self._get_job(caller, job_id)
        results_for_owner_only(caller.name, job)
        if job.state != JobState.SUCCEEDED:
            raise Conflict(f"job {job_id} is {job.state.value}: results come once it has succeeded")
        if job.result_dropped:
            raise Gone(f"job {job_id}: {job.result_dropped}")
        blob = self.store.rb.get(self.store.k("result", job_id))
        if blob is None:
            raise NotFound(f"job {job_id} has no stored results (a command job returns none)")
        return blob

    async def summary(self, caller: Caller) -> dict[str, Any]:
        """Pools with GPUs used/free and queue lengths, and the caller's own job counts."""
        return await self.reads.run(self._summary, caller)

    def _summary(self, caller: Caller) -> dict[str, Any]:
        snap = self.store.get_json("snapshot") or {}
        mine: dict[str, int] = {}
        live = self._live(caller.name)
        for j in live:
            mine[j.state.value] = mine.get(j.state.value, 0) + 1
        pools = snap.get("pools", {})
        if not caller.admin:  # another user's job ids are not shown (its 404 says no such job)
            own = {j.id for j in live}
            pools = {name: {**p, "reserved_for": [i for i in p.get("reserved_for", ()) if i in own]}
                     if isinstance(p, dict) else p for name, p in pools.items()}
        out = {"mode": "cluster", "pools": pools, "nodes": snap.get("nodes", {}),
               "me": {"user": caller.name, "admin": caller.admin, "jobs": mine}}
        if "users" in snap and caller.admin:
            out["users"] = snap["users"]
        if not snap:
            out["warning"] = "no scheduler daemon has published the queue yet: is `gpuqueue scheduler` running?"
        out.update(gpumap.redis_view(self.store, self.config() if snap else None, snap, caller))
        return out

    # -- helpers --------------------------------------------------------------------------
    def _live(self, owner: str) -> list[JobRecord]:
        return [j for j in self.store.live_jobs(owner) if j.state in LIVE_STATES]

    def _iter_live(self, owner: str) -> Iterator[JobRecord]:
        """The owner's live jobs, read from Redis only once iterated."""
        yield from self._live(owner)

    def _with_pending(self, job: JobRecord) -> JobRecord:
        return self._with_pending_many([job])[0]

    def _with_pending_many(self, jobs: list[JobRecord]) -> list[JobRecord]:
        waiting = [j for j in jobs if j.state in WAITING_STATES]
        if waiting:
            raws = self.store.r.hmget(self.store.k("pending"), [j.id for j in waiting])
            for j, raw in zip(waiting, raws):
                j.pending = json.loads(raw) if raw else {"reason": "pending", "message": "waiting for the next scheduling pass", "position": 0}
        return jobs
