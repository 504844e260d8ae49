"""``gpuqueue scheduler --redis URL [--config FILE]``: the cluster's scheduler daemon.

One daemon leads (a lock in Redis with a fencing token: every write it makes is refused once
another has taken over); a second one waits as a standby. At start the leader rebuilds the
scheduler from the store: the same core the embedded mode runs (``make_scheduler``), fed the
same events (submit, started, finished, node up/down, tick). It sends a job to a node's own
Celery queue only once the scheduler has placed it on that node's free GPUs, so the broker never
orders work. Workers report starts and exits back through the ``daemon`` stream; a node whose
heartbeat lapses is lost and its jobs are queued again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from typing import Any, Optional, Sequence

import kombu.exceptions
import redis

from . import cliargs, redis_url
from ..queue.config import GROWING, QueueConfig, load_config
from ..queue.durations import KEEP_FINISHED, parse_retention
from ..queue.errors import GPUQueueError, Rejected
from ..queue.lifecycle import adopt, job_request
from ..queue.models import Attempt, JobRecord
from ..scheduler import make_scheduler
from ..queue.shell import AttemptReport, Listener, QueueShell
from ..queue.states import WAITING_STATES, JobState, Outcome
from .celeryconfig import TASK_NAME, make_app, node_queue
from .redis_store import Fenced, LostLeadership, Op, RedisStore
from .daemon_config import reread
from .daemon_nodes import Nodes, NodeSeen
from .daemon_reconcile import Reconcile, Unlisted
from .daemon_upkeep import Upkeep
from .leadership import Leadership
from .store_bounds import StoreBounds

log = logging.getLogger("gpuqueue.daemon")

MAX_MESSAGES_PER_STEP = 50  # per stream: the workers' reports wait at most one such batch of submissions
DEFAULT_KEEP_FINISHED_S = parse_retention(KEEP_FINISHED)  # finished jobs are deleted from Redis this long after they end
class Daemon(QueueShell, Leadership, Nodes, Reconcile, Upkeep, StoreBounds):
    """The leader's loop. Single-threaded: one Redis connection pool, one scheduler. Decisions
    are carried out and attempts settled by :class:`QueueShell`, as in the embedded queue; this
    class sends attempts to nodes' Celery queues and writes to Redis under its fencing token."""

    def __init__(
        self,
        store: RedisStore,
        config: Optional[QueueConfig] = None,
        policy: str = "gpuqueue",
        node_timeout: float = 60.0,
        leader_ttl: float = 10.0,
        start_timeout: float = 120.0,
        stop_grace: float = 30.0,
        name: str = "",
        keep_finished: Optional[float] = DEFAULT_KEEP_FINISHED_S,
        celery_events: bool = False,
        config_path: Optional[str] = None,
    ):
        self.store = store
        self.config_path = config_path  # read again when this daemon takes the lead (daemon_config.py)
        self.url_source = "the environment"  # where the Redis URL came from, for the fix of a refused password
        self.policy = policy
        self.node_timeout = node_timeout
        self.leader_ttl_ms = int(leader_ttl * 1000)
        self.start_timeout = start_timeout
        self.stop_grace_s = stop_grace
        self.keep_finished = keep_finished
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.token: Optional[str] = None
        self.celery = make_app(store.url, celery_events or None)
        self.config: QueueConfig = config or _empty_config()
        self.config_lists_nodes = config is not None  # a config file: a node it does not list is worth a word
        # without one, the pools are the workers that beat now: a job too big for them may fit
        # one that is away, so the rebuild does not fail it (QueueShell._requeue)
        self.nodes_known = self.config_lists_nodes
        self.scheduler: Any = None
        self.nodes: dict[str, NodeSeen] = {}
        # node -> (instance, seq) of the last beat of a node found lost: that stale beat stays in
        # the store, and must not bring the node up again (only a new beat does)
        self.lost_beats: dict[str, tuple[str, Any]] = {}
        self.known: set[str] = set()  # non-terminal jobs the scheduler holds
        # Records of non-terminal jobs, as last written or read. The daemon is the only writer
        # of an existing job's record (the API only creates them), so this saves a read and a
        # parse per change; it is dropped at every rebuild and whenever a change fails.
        self.jobs: dict[str, JobRecord] = {}
        self.dispatched: dict[str, tuple[int, float]] = {}  # job -> (attempt, monotonic) until claimed
        self.unlisted: dict[str, Unlisted] = {}  # running attempts their worker's beats did not list
        self._last_reconcile = 0.0
        self.metrics: Any = None
        self.listeners: list[Listener] = []  # metrics
        self.lock = threading.Lock()  # held while the scheduler changes (a metrics scrape reads it)
        self.unsent: dict[str, JobRecord] = {}  # launches the broker did not take yet
        self.cursor = "0-0"  # last message handled from the API's stream (``daemon``)
        self.reports_cursor = "0-0"  # and from the workers' (``reports``)
        self._last_trim = 0.0
        self._stopping = False
        self._lost = False
        self._token_lock = threading.Lock()  # the leader token and _lost change together
        self._last_nodes = 0.0
        self._last_publish = 0.0
        self._last_pending = 0.0
        self._last_state = 0.0
        self._last_gc = 0.0
        self._explain_from = 0
        self._to_explain: deque[str] = deque()
        self._explain_budget = 0.0
        self._explain_left = 0
        self._explained: set[str] = set()
        self._init_bounds()

    def _exec(self, ops: list[Op]) -> None:
        try:
            self.store.exec(ops, guards=[(self.store.k("leader"), self.token or "")])
        except Fenced as e:
            raise LostLeadership(str(e)) from None

    # -- rebuild --------------------------------------------------------------------------
    def rebuild(self) -> None:
        """Rebuild the scheduler from the store: nodes that beat, queued and running jobs."""
        st = self.store
        now = time.time()
        self.scheduler = make_scheduler(self.config, self.policy)
        saved = st.get_json("sched_state")
        if saved:
            self.scheduler.import_state(saved)
        for pool in self.config.pools.values():
            for node in pool.nodes:
                self.scheduler.node_down(node, now)  # down until its worker beats
        self.nodes.clear()
        self._check_nodes(initial=True)
        self._publish_config()  # with the nodes that joined before this daemon led
        self.known.clear()
        self.dispatched.clear()
        self.unlisted.clear()
        self.unsent.clear()
        self.jobs.clear()
        resend: list[JobRecord] = []
        for job in st.active_jobs():
            self.jobs[job.id] = job
            if job.state in WAITING_STATES:
                if job.spec.pool is None:  # taken before any config was published: never admitted
                    self._admit(job)
                elif self._requeue(job, job_request(job, self.config), now):
                    self.known.add(job.id)
                continue
            req = job_request(job, self.config)
            a = job.current_attempt
            if a is None:
                continue
            exit_rec = st.get_json("exit", job.id, a.number)
            claim = st.r.get(st.k("claim", job.id, a.number))
            seen = self.nodes.get(a.node)
            alive = seen is not None and (claim is None or claim == seen.instance)
            if alive:
                try:
                    placement = {n: tuple(ids) for n, ids in a.placement.items()}
                    self.scheduler.restore_running(req, placement, a.started_at)
                    self.known.add(job.id)
                except (RuntimeError, KeyError) as e:
                    log.warning("job %s: cannot restore its placement (%s)", job.id, e)
                    alive = False
            if not alive:
                self._lost_unplaced(job, f"node {a.node} is gone")
                continue
            if exit_rec is not None:
                self._end_attempt(job, exit_rec)
            elif job.state == JobState.STARTING:
                started = st.get_json("started", job.id, a.number)
                if started is not None:
                    self._on_started(job, started)
                elif claim is None:
                    resend.append(job)
        self.cursor = st.r.get(st.k("daemon", "cursor")) or "0-0"
        self.reports_cursor = st.r.get(st.k("reports", "cursor")) or "0-0"
        for job in resend:  # the launch message may have been lost with the old leader
            self._send_launch(job)
        log.info("rebuilt: %d jobs, nodes %s", len(self.known), sorted(self.nodes))

    def _lost_unplaced(self, job: JobRecord, why: str) -> None:
        """A running job found at rebuild on a node that is gone: queue it again."""
        a = job.current_attempt
        assert a is not None
        a.outcome, a.ended_at, a.message = Outcome.LOST, time.time(), f"lost: {why}"
        job.state = JobState.QUEUED
        job.not_before = None
        if not self._requeue(job, job_request(job, self.config), time.time()):
            return
        self.known.add(job.id)
        self._exec(
            self.store.job_ops(job)
            + [["SET", self.store.k("fence", job.id), f"{a.number}:settled"]]
            + [self.store.event_op(job.id, "state", {"state": "queued", "after": "lost", "attempt": a.number,
                                                     "why": why})]
        )

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        """Lead until stopped; returns the process exit code."""
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stopping", True))
        signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stopping", True))
        self.wait_for_lead()
        if self._stopping:
            return 0
        if self.config_path:  # a standby may have waited for hours: lead with the file as it is now
            self.config = reread(self.config_path, self.policy, self.config)
        threading.Thread(target=self._renew_loop, name="leader-lock", daemon=True).start()
        self._publish_config()
        self.rebuild()
        outage = False
        while not self._stopping:
            try:
                if outage:
                    # a pass may have stopped half-way: the store is the truth, rebuild from it
                    # (nodes that beat get a fresh timeout: nobody could beat during the outage)
                    self.store.r.ping()
                    log.info("redis is back; rebuilding from the store")
                    self.rebuild()
                    outage = False
                self._renew()
                self.step()
            except LostLeadership as e:
                if self._retake():
                    log.warning("the leader lock lapsed (%s) and nobody took it: leading again", e)
                    outage = True  # rebuild with the new token
                    continue
                log.error("stepping down: %s", e)
                if self.metrics is not None:
                    self.metrics.set_leader(False)
                return 3
            except (redis.ConnectionError, redis.TimeoutError, OSError, kombu.exceptions.OperationalError) as e:
                if not outage:
                    log.warning("redis unavailable (%s); retrying", e)
                outage = True
                time.sleep(0.5)
            except Exception:  # noqa: BLE001 - a bug in one pass must not stop the queue
                log.exception("scheduling step failed; rebuilding from the store")
                outage = True
                time.sleep(0.5)
        self._save_state(force=True)
        # hand the lock over at once
        try:
            if self.store.r.get(self.store.k("leader")) == self.token:
                self.store.r.delete(self.store.k("leader"))
        except redis.RedisError:
            pass
        return 0

    def step(self, block_ms: int = 200) -> None:
        """Read messages (waiting up to ``block_ms``), check nodes, run a scheduling pass."""
        st = self.store
        for job in list(self.unsent.values()):
            self._send_launch(job)
        rows = st.r.xread({st.k("reports"): self.reports_cursor, st.k("daemon"): self.cursor},
                          count=MAX_MESSAGES_PER_STEP, block=block_ms)
        with self.lock:
            self._step(rows)

    def _step(self, rows: Any) -> None:
        st = self.store
        batches = {name: entries for name, entries in rows or []}
        reports, inbox = batches.get(st.k("reports"), []), batches.get(st.k("daemon"), [])
        if reports:  # the workers' starts and exits go first: a flood of submissions never delays them
            self._handle_batch(reports)
            self.reports_cursor = reports[-1][0]
            self._exec([["SET", st.k("reports", "cursor"), self.reports_cursor]])
            # the beats now, before any pass: a stopping worker says so before it stops its jobs,
            # so the jobs it stopped (in these reports) are never placed on it again
            self._check_nodes()
            if inbox:
                self.tick()  # GPUs that went free go to the waiting jobs before the new ones are read
        if inbox:
            self._handle_batch(inbox)
            self.cursor = inbox[-1][0]
            self._exec([["SET", st.k("daemon", "cursor"), self.cursor]])
        now_m = time.monotonic()
        if now_m - self._last_nodes > 0.2:
            self._last_nodes = now_m
            self._check_nodes()
            self._check_starts()
            self._reconcile()
        self.tick()
        self._publish()
        self._save_state()
        self._expire()
        self._prune_logs()
        self._trim()

    # -- messages -------------------------------------------------------------------------
    def _handle_batch(self, entries: list[Any]) -> None:
        msgs = []
        for mid, fields in entries:
            try:
                msgs.append((mid, json.loads(fields["m"])))
            except ValueError:
                log.warning("message %s is not JSON: dropped", mid)
        self._prefetch([m.get("job", "") for _, m in msgs])  # one MGET for the batch's new jobs
        for mid, m in msgs:
            try:
                self._handle(m)
            except (LostLeadership, redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # noqa: BLE001 - one bad message must not stop the queue
                log.exception("message %s failed", mid)
                self.jobs.pop(m.get("job", ""), None)  # re-read it from the store next time

    def _find(self, job_id: str) -> Optional[JobRecord]:
        """A job's record: the cached one, else from the store."""
        job = self.jobs.get(job_id)
        if job is None:
            job = self.store.get_job(job_id)
            if job is not None and not job.state.is_terminal:
                self.jobs[job_id] = job
        return job

    def _prefetch(self, ids: list[str]) -> None:
        missing = sorted({i for i in ids if i and i not in self.jobs})
        for job in self.store.get_jobs(missing):
            if not job.state.is_terminal:
                self.jobs[job.id] = job

    def _handle(self, m: dict[str, Any]) -> None:
        op = m.get("op")
        job = self._find(m.get("job", ""))
        if job is None:
            return
        if op == "submit":
            if job.id in self.known or job.state != JobState.QUEUED:
                return
            if self._admit(job):
                self._notify("submitted", {"job": job})
        elif op == "cancel":
            if job.state.is_terminal:
                return
            if job.state in (JobState.STARTING, JobState.RUNNING):
                self._request_stop(job, "cancelled", self.stop_grace_s)
            else:
                self.scheduler.cancel(job.id, time.time())
                self.known.discard(job.id)
                self._set_state(job, JobState.CANCELLED, note=f"cancelled by {m.get('by')}")
        elif op == "preempt":
            if job.state in (JobState.STARTING, JobState.RUNNING):
                self._request_stop(job, "preempted", self.stop_grace_s)
        elif op == "started":
            a = job.current_attempt
            if a and a.number == m.get("attempt") and job.state == JobState.STARTING:
                self._on_started(job, m)
            elif a and a.number == m.get("attempt") and job.state == JobState.RUNNING and a.pid is None:
                self._started_late(job, m)
        elif op == "exit":
            a = job.current_attempt
            if a and a.number == m.get("attempt") and a.outcome is None and job.state.is_active:
                self._end_attempt(job, m.get("rec", {}))

    def _admit(self, job: JobRecord) -> bool:
        """Give the scheduler a job it has not taken yet (a submit, or at rebuild one the API
        took before any config was published: completed by ``lifecycle.adopt`` first, and
        written back). One the config or the scheduler refuses fails, saying why. True if queued."""
        try:
            if adopt(job, self.config):
                self._exec(self.store.job_ops(job))
        except Rejected as e:
            self._unqueueable(job, str(e))
            return False
        rej = self.scheduler.submit(job_request(job, self.config), time.time())
        if rej is not None:
            job.error = f"rejected: {rej.reason}"
            self._set_state(job, JobState.FAILED, error=job.error)
            return False
        self.known.add(job.id)
        return True

    def _on_started(self, job: JobRecord, m: dict[str, Any]) -> None:
        a = job.current_attempt
        assert a is not None
        self.dispatched.pop(job.id, None)
        a.started_at = float(m.get("t") or time.time())
        a.pid = m.get("pid")
        self.scheduler.started(job.id, time.time())
        self._set_state(job, JobState.RUNNING, node=a.node, gpus=a.gpu_ids)
        self._notify("started", {"job": job})

    # -- starting and stopping ------------------------------------------------------------
    def _start_attempt(self, job_id: str, placement: dict[str, tuple[int, ...]]) -> None:
        """A ``Start``: the attempt recorded under a new fence, the launch sent to the node."""
        job = self._find(job_id)
        if job is None or job.state.is_terminal:
            self.scheduler.cancel(job_id, time.time())
            self.known.discard(job_id)
            return
        number = len(job.attempts) + 1
        node = next(iter(placement))
        devices = list(placement[node])
        job.attempts.append(
            Attempt(number=number, node=node, gpu_ids=devices,
                    placement={n: list(ids) for n, ids in placement.items()}, started_at=time.time())
        )
        job.state = JobState.STARTING
        job.not_before = None
        self._exec(
            self.store.job_ops(job)
            + [["SET", self.store.k("fence", job.id), f"{number}:{node}"]]
            + [self.store.event_op(job.id, "state", {"state": "starting", "attempt": number, "node": node, "gpus": devices})]
        )
        self._send_launch(job)

    def _send_launch(self, job: JobRecord) -> None:
        """Put the launch on the node's queue; if the broker is away, try again next step."""
        a = job.current_attempt
        assert a is not None
        self.dispatched[job.id] = (a.number, time.monotonic())
        self.unsent[job.id] = job
        try:
            self.celery.send_task(
                TASK_NAME,
                kwargs={"job_id": job.id, "attempt": a.number, "node": a.node, "devices": a.gpu_ids,
                        "placement": a.placement, "spec": job.spec.model_dump(mode="json")},
                queue=node_queue(a.node),
                retry=False,
                # what Celery's logs show of the message; given, it skips a costly saferepr
                argsrepr="()", kwargsrepr=f"{{'job_id': {job.id!r}, 'attempt': {a.number}, 'node': {a.node!r}}}",
            )
            for other, ids in list(a.placement.items())[1:]:  # the gang's other nodes join its own Ray
                self.celery.send_task(  # (gpuqueue.cluster.rayjob; ignored by workers given a shared Ray)
                    TASK_NAME,
                    kwargs={"ray_join": True, "job_id": job.id, "attempt": a.number, "node": other, "head": a.node,
                            "devices": list(ids), "spec": job.spec.model_dump(mode="json")},
                    queue=node_queue(other), retry=False, argsrepr="()",
                    kwargsrepr=f"{{'ray_join': True, 'job_id': {job.id!r}, 'attempt': {a.number}, 'node': {other!r}}}",
                )
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as e:
            log.warning("cannot send job %s to %s yet (%s); will retry", job.id, a.node, e)
            return
        self.unsent.pop(job.id, None)

    def _request_stop(self, job: JobRecord, reason: str, grace_s: float, message: str = "") -> None:
        """A stop request on the node's control list, with the record and an event at once."""
        a = job.current_attempt
        if a is None or a.stop_requested:
            return
        a.stop_requested = reason
        ctl = {"job": job.id, "attempt": a.number, "reason": reason, "grace_s": grace_s}
        # the runner says it is asked to stop, and its grace, in the job's stream ("stopping
        # (...); it has Ns to save a checkpoint"): here only why, where the policy said
        self._exec(
            self.store.job_ops(job)
            + [["RPUSH", self.store.k("ctl", a.node), json.dumps(ctl)]]
            + ([self.store.event_op(job.id, "warning", {"message": message})] if message else [])
        )

    def _check_starts(self) -> None:
        """An attempt nobody claimed in ``start_timeout`` is lost (its message, or its node)."""
        now = time.monotonic()
        for job_id, (number, t) in list(self.dispatched.items()):
            if now - t < self.start_timeout:
                continue
            del self.dispatched[job_id]
            job = self._find(job_id)
            a = None if job is None else job.current_attempt
            if job is None or job.state != JobState.STARTING or a is None or a.number != number:
                continue
            if self.store.r.get(self.store.k("claim", job_id, number)):
                continue
            self._end_attempt(job, {"exit_code": None, "lost": True, "error": "no worker took the job in time"})

    # -- ending attempts (QueueShell._end_attempt) ------------------------------------------
    def _attempt_report(self, job: JobRecord, exit_record: dict[str, Any]) -> AttemptReport:
        """The worker put what the attempt left in its exit report."""
        return AttemptReport(bool(exit_record.get("result_stored")), exit_record.get("error_record"),
                             exit_record.get("result"), int(exit_record.get("result_bytes") or 0))

    def _attempt_settled(self, job: JobRecord, state: JobState) -> Sequence[Any]:
        """The attempt is no longer awaited; the fence moves on so its late writes are refused.
        A succeeded job's results join its owner's (within ``max_results_mb``); a job that ended
        otherwise has none to give, so what its attempt stored goes."""
        a = job.current_attempt
        assert a is not None
        self.dispatched.pop(job.id, None)
        self.unsent.pop(job.id, None)
        if state.is_terminal:
            self.known.discard(job.id)
        ops: list[Op] = [["SET", self.store.k("fence", job.id), f"{a.number}:settled"]]
        older: dict[str, JobRecord] = {}  # older jobs' records changed here, written once
        if state == JobState.SUCCEEDED and job.result_bytes:
            ops += self._keep_results_within(job, older)
        elif state.is_terminal and state != JobState.SUCCEEDED:
            ops.append(["DEL", self.store.k("result", job.id)])
        if state.is_terminal:
            ops += self._keep_logs_within(job, older)
        # XX: an older job deleted since it was read (``gpuqueue rm``, a name release) stays deleted
        return ops + [["SET", self.store.k("job", old.id), old.model_dump_json(exclude={"pending"}), "XX"]
                      for old in older.values()]

    def _record_state(self, job: JobRecord, data: dict[str, Any], extra: Sequence[Any]) -> None:
        """The record, ``extra`` and the state event in one guarded write; a finished job may
        put its owner over ``max_finished``."""
        if job.state.is_terminal:
            self.jobs.pop(job.id, None)
        self._exec(self.store.job_ops(job) + list(extra) + [self.store.event_op(job.id, "state", data)])
        if job.state.is_terminal:
            self._keep_finished_within(job.owner)

    def _event(self, job_id: str, type_: str, data: dict[str, Any]) -> None:
        self._exec([self.store.event_op(job_id, type_, data)])

def _empty_config() -> QueueConfig:
    """Without a config file: one pool 'default' that grows as workers join."""
    return QueueConfig.model_validate({"pools": {"default": {"nodes": {}}}}, context=GROWING)


def _url_source(args: argparse.Namespace) -> str:
    """Where this daemon's Redis URL (and its password) came from: what to correct when Redis
    refuses it."""
    if args.redis_file:
        return f"--redis-file {args.redis_file}"
    return "--redis" if args.redis else "the environment"


def _retention(text: str) -> Optional[float]:
    n = text.strip()
    if n.replace(".", "", 1).isdigit() and float(n) != 0:  # 30 read as seconds deleted jobs 30 s after they ended
        raise argparse.ArgumentTypeError(f"{n} has no unit: write e.g. {n}d, {n}h or {n}s, or 'forever'")
    try:
        return parse_retention(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    """``gpuqueue scheduler`` options."""
    p = argparse.ArgumentParser(prog="gpuqueue scheduler", description="Run the cluster's scheduler daemon (one leads, others stand by).")
    redis_url.add_arguments(p)
    p.add_argument("--config", default=os.environ.get("GPUQUEUE_CONFIG"), help="pools TOML (docs/config.md); default: pool 'default' of whatever workers join")
    p.add_argument("--policy", default="gpuqueue", choices=["gpuqueue", "fifo"])
    p.add_argument("--node-timeout", type=cliargs.SECONDS, default=60.0, help="seconds without a heartbeat before a node is lost and its jobs requeued (default 60)")
    p.add_argument("--leader-ttl", type=cliargs.SECONDS, default=10.0, help="seconds the leader lock lasts without renewal (default 10)")
    p.add_argument("--start-timeout", type=cliargs.SECONDS, default=120.0, help="seconds a dispatched attempt may wait for its worker (default 120)")
    p.add_argument("--stop-grace", type=cliargs.SECONDS_OR_ZERO, default=30.0, help="seconds to stop after cancel/timeout (default 30)")
    p.add_argument("--keep-finished", default=KEEP_FINISHED, type=_retention, metavar="DURATION",
                   help="delete a finished job (record, events, results) this long after it ended, "
                        "e.g. 7d, 12h; 'forever' keeps them (default %(default)s)")
    p.add_argument("--prefix", default="gq", help="Redis key prefix (default gq)")
    p.add_argument("--celery-events", action="store_true",
                   help="send a Celery task-sent event per launch, for Flower (default: $GPUQUEUE_CELERY_EVENTS, else off)")
    p.add_argument("--metrics-port", type=cliargs.PORT, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="address /metrics listens on (default %(default)s: every interface). Its series name every "
                        "running job, its user, pool, node and GPUs, with no login: give an address of the "
                        "monitoring network, which jobs on the GPU nodes cannot reach")
    p.add_argument("--log-level", default="INFO", help="log level; the format is JSON unless on a terminal ($GPUQUEUE_LOG_FORMAT)")
    return p


def cli_main(argv: list[str]) -> int:
    """Entry point of ``gpuqueue scheduler``."""
    args = build_parser().parse_args(argv)
    from .envcheck import start_process

    if not start_process("scheduler", log, args.log_level, component="scheduler"):
        return 2
    try:
        url = redis_url.from_args(args)
    except ValueError as e:
        print(f"gpuqueue scheduler: {e}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else None
    except GPUQueueError as e:
        print(f"gpuqueue scheduler: {e}", file=sys.stderr)
        return 2
    if config is not None:
        try:
            make_scheduler(config, args.policy)  # FIFO over a config with quotas: refused
        except ValueError as e:
            print(f"gpuqueue scheduler: {e}", file=sys.stderr)
            return 2
    log.info("gpuqueue scheduler starting: config %s; redis %s (from %s); metrics %s; policy %s",
             args.config or "none (pool 'default' of the workers that join)", redis_url.mask(url), _url_source(args),
             f"on http://{args.metrics_address}:{args.metrics_port}/metrics" if args.metrics_port
             else "off (no --metrics-port)", args.policy)
    store = RedisStore(url, args.prefix)
    # e.g. the API's or a worker's user of users.acl: it led, then retried NOPERM for ever
    wrong_user = redis_url.wrong_user(store.r, store.url, "scheduler", [store.k("leader"), node_queue("acl-check")])
    if wrong_user:
        print(f"gpuqueue scheduler: {wrong_user}", file=sys.stderr)
        return 2
    d = Daemon(store, config, args.policy, args.node_timeout,
               args.leader_ttl, args.start_timeout, args.stop_grace, keep_finished=args.keep_finished,
               celery_events=args.celery_events, config_path=args.config)
    d.url_source = _url_source(args)
    if args.metrics_port:
        from ..observability import metrics

        d.metrics = metrics.attach(d, mode="cluster", lock=d.lock, nvml=False, leader=False)
        try:
            metrics.serve_metrics(args.metrics_port, d.metrics.registry, args.metrics_address)
        except OSError as e:
            print(f"gpuqueue scheduler: {metrics.port_error(args.metrics_port, e, args.metrics_address)}", file=sys.stderr)
            return 1
    return d.run()
