"""What the scheduler daemon publishes and tidies between its passes: the effective config and
the queue's snapshot (read by the API), why queued jobs wait, the scheduler's saved state; finished
jobs deleted after ``--keep-finished``; handled messages trimmed from its inbound streams."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

import redis

from ..queue.config import QueueConfig
from ..queue.durations import format_duration
from ..queue.models import JobRecord
from ..queue.text import count
from .redis_store import LostLeadership, Op, RedisStore
from .store_bounds import EXPIRE_BATCH

if TYPE_CHECKING:
    from .daemon_nodes import NodeSeen

log = logging.getLogger("gpuqueue.daemon")

EXPIRE_SCAN = 2000  # oldest job ids looked at per expiry round
MESSAGES_KEPT_S = 3600.0  # handled inbox messages are trimmed after this long
MAX_EXPLAINED = 300  # queued jobs whose "why it waits" is published per round
EXPLAIN_BUDGET_S = 0.025  # and at most this much CPU per round (every 2 s): an explanation costs
# a sort of its pool's queue, so 300 of them on a deep queue would take a core's tenth
EXPLAIN_SLICE_S = 0.004  # explained per step, so that a worker's report never waits long behind it


class Upkeep:
    """The daemon's publishing and tidying (a mixin of ``Daemon``, which sets the attributes
    below)."""

    store: RedisStore
    config: QueueConfig
    scheduler: Any
    name: str
    nodes: dict[str, "NodeSeen"]
    known: set[str]
    keep_finished: Optional[float]
    cursor: str
    reports_cursor: str
    _last_publish: float
    _last_pending: float
    _last_state: float
    _last_gc: float
    _last_trim: float
    _explain_from: int
    _to_explain: deque[str]
    _explain_budget: float
    _explain_left: int
    _explained: set[str]

    if TYPE_CHECKING:
        def _exec(self, ops: list[Op]) -> None: ...

    def _publish_config(self) -> None:
        """Publish the effective config: the API uses it for defaults and admission checks."""
        self._exec([["SET", self.store.k("config"), self.config.model_dump_json()]])

    def _publish(self) -> None:
        """Publish the queue's snapshot (every 0.5 s) and why queued jobs wait (a round every
        2 s, explained a slice per step so that no step is held up for long)."""
        now = time.monotonic()
        ops: list[Op] = []
        if now - self._last_publish >= 0.5:
            self._last_publish = now
            snap = self.scheduler.snapshot()
            snap["nodes"] = {n: {"pool": s.pool, "gpus": s.gpus} for n, s in self.nodes.items()}
            snap["leader"] = self.name
            ops.append(["SET", self.store.k("snapshot"), json.dumps(snap, default=str)])
            if now - self._last_pending > 2.0:
                self._last_pending = now
                if self._explained - self.known:
                    ops.append(["HDEL", self.store.k("pending"), *(self._explained - self.known)])
                self._explained = set(self.known)
                # a rotating window of the queued jobs: explaining one costs up to a pass of its pool
                ids = sorted(self.known)
                start = self._explain_from if self._explain_from < len(ids) else 0
                self._explain_from = start
                self._to_explain = deque(ids[start:] + ids[:start])
                self._explain_budget = EXPLAIN_BUDGET_S
                self._explain_left = MAX_EXPLAINED
        if self._to_explain:
            t, t0 = time.time(), time.perf_counter()
            stop_at = t0 + min(EXPLAIN_SLICE_S, self._explain_budget)
            while self._to_explain and self._explain_left > 0 and time.perf_counter() < stop_at:
                job_id = self._to_explain.popleft()
                self._explain_from += 1
                ex = self.scheduler.explain(job_id, t) if job_id in self.known else None
                if ex is not None:
                    ops.append(["HSET", self.store.k("pending"), job_id, json.dumps(ex.as_dict(), default=str)])
                    self._explain_left -= 1
            self._explain_budget -= time.perf_counter() - t0
            if self._explain_budget <= 0 or self._explain_left <= 0:
                self._to_explain.clear()  # this round is done; the window goes on from here next round
        if ops:
            self._exec(ops)

    def _expire(self) -> None:
        """Delete finished jobs (record, events, payload, results, bookkeeping) that ended more
        than ``keep_finished`` seconds ago. Runs every minute (sooner for a short retention) and
        looks at the oldest jobs first, a bounded number per round."""
        if self.keep_finished is None:
            return
        now_m = time.monotonic()
        if now_m - self._last_gc < min(60.0, self.keep_finished / 4):
            return
        self._last_gc = now_m
        st = self.store
        cutoff = time.time() - self.keep_finished
        offset = 0
        gone: list[JobRecord] = []
        while offset < EXPIRE_SCAN:
            # created before the cutoff is necessary (a job ends after it is created), not enough
            ids = st.r.zrangebyscore(st.k("jobs"), "-inf", cutoff, start=offset, num=500)
            if not ids:
                break
            jobs = st.get_jobs(ids)
            missing = set(ids) - {j.id for j in jobs}  # records deleted by hand: drop the index entry
            if missing:
                self._exec([["ZREM", st.k("jobs"), *sorted(missing)]])
            expired = [j for j in jobs if j.state.is_terminal and j.updated_at < cutoff]
            gone += expired
            offset += len(ids) - len(missing) - len(expired)
            for i in range(0, len(expired), EXPIRE_BATCH):
                self._exec([op for j in expired[i : i + EXPIRE_BATCH] for op in st.delete_job_ops(j)])
        if gone:
            log.info("deleted %s that finished over %s ago", count(len(gone), "job"), format_duration(self.keep_finished))

    def _trim(self) -> None:
        """Drop handled messages older than an hour from the two inbound streams (the hour is
        kept for debugging)."""
        now_m = time.monotonic()
        if now_m - self._last_trim < 60.0:
            return
        self._last_trim = now_m
        hour_ago = (int((time.time() - MESSAGES_KEPT_S) * 1000), 0)
        ops: list[Op] = []
        for key, cursor in (("daemon", self.cursor), ("reports", self.reports_cursor)):
            ms, _, seq = cursor.partition("-")
            upto = min(hour_ago, (int(ms), int(seq or 0)))
            if upto > (0, 0):
                ops.append(["XTRIM", self.store.k(key), "MINID", f"{upto[0]}-{upto[1]}"])
        if ops:
            self._exec(ops)

    def _save_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_state > 30.0:
            self._last_state = now
            try:
                self._exec([["SET", self.store.k("sched_state"), json.dumps(self.scheduler.export_state())]])
            except (LostLeadership, redis.RedisError):
                pass
