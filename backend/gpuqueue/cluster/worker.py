"""``gpuqueue worker --redis URL --node NAME [--gpus N] [--pool POOL]``: one Celery worker per
GPU node.

It registers the node's inventory (NVML, or the declared count) and heartbeats. The daemon sends
it "launch attempt N of job J on GPUs [...]" on the node's own Celery queue; the worker claims
the attempt in the store (refused if the attempt is superseded or already claimed), starts it
with the same runner as the embedded mode (``gpuqueue.attempt.runner``, forked ahead of time by the
worker's fork server, ``forkserver.py``), copies the attempt's
``events.jsonl`` into the job's Redis Stream, and reports the start and the exit to the daemon
(``worker_tail.py``). A runner that is killed under its job leaves the job's processes to the
fork server, which ends them; the attempt is reported lost, saying so. Where it can write cgroup
v2, each attempt also runs in a cgroup of its own, killed when the attempt ends
(``gpuqueue.attempt.cgroup``): what a runner killed together with its fork server leaves ends too.

Fencing: every write for an attempt is guarded by ``fence:<job> == "<attempt>:<node>"``. Once
the daemon has settled or requeued an attempt, its events, start, checkpoint and result records
are refused, and the worker stops the process if it is still running (a zombie is fenced off).
Runners die with the worker (``PR_SET_PDEATHSIG``, through the fork server), so a killed worker
never leaves a job running that the daemon is about to requeue.

Isolation: run as root, the worker starts each job under its owner's own Unix identity
(``gpuqueue.attempt.identity``; ``--identities``), with the job's folders its own and the runner's
records out of its reach (``gpuqueue.attempt.jobdir``). What the job produced (results, its error) is
read from that attempt's own folder only, refusing links and files that are not the job's, and
written only under that job's keys, fenced. Each attempt gets its own ``/tmp``, ``/var/tmp`` and
``/dev/shm`` (``--private-tmp``, ``gpuqueue.attempt.privtmp``) where the worker can make them.
Not root, it says at start what isolation is left.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
import warnings
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Optional, Union, cast

import redis

from . import redis_url
from ..attempt import identity as identities
from ..attempt import launchfail, privtmp
from ..attempt.cgroup import REMEDY as CGROUP_REMEDY, AttemptCgroups, CgroupsUnavailable, end as end_cgroup
from ..attempt.gpus import local_gpu_count, nvml_gpu_count
from ..attempt.identity import Identities, Identity, IdentityError
from ..attempt.jobdir import (OwnedDir, attempt_paths, job_dir, own_folder, prepare_owned, write_bytes_atomic,
                              write_json_atomic)
from ..attempt.launch import build_launch, runner_env
from ..queue.models import JobSpec
from ..queue.text import count
from ..observability.repeats import Repeats
from .celeryconfig import TASK_NAME, events_enabled, make_app, node_queue
from .forkserver import ForkServer, not_dumpable
from .redis_store import Fenced, RedisStore
from . import shared_resume
from .rayjob import RayNodes, shared_ray
from .shared_root import SharedRoot, StorageError, load_options
from .worker_args import NOT_ROOT_WARNING, build_parser, open_to_others, unreachable
from .worker_lock import StateDirBusy, lock_state_dir
from .worker_sweep import SWEEP_S, LocalSweeper, Sweeper, queue_id, tag_job_folder
from .worker_tail import GIVE_UP_S, AttemptTailer, LocalAttempt

log = logging.getLogger("gpuqueue.worker")


class NodeAgent(AttemptTailer):
    """The node's side of the store: heartbeats, launches, and (:class:`AttemptTailer`, in
    ``worker_tail.py``) event tailing, exit reports and stop requests."""

    def __init__(self, store: RedisStore, node: str, gpus: int, pool: Optional[str], state_dir: Path,
                 heartbeat_s: float = 10.0, max_result_bytes: int = 200_000_000,
                 identities: Optional[Identities] = None, shared: Optional[SharedRoot] = None,
                 sweep_s: float = SWEEP_S, local_sweep_s: float = SWEEP_S, give_up_s: float = GIVE_UP_S,
                 cgroups: Optional[AttemptCgroups] = None, private_tmp: Optional[int] = None):
        self.store = store
        # each attempt's own /tmp, /var/tmp, /dev/shm (gpuqueue.attempt.privtmp), with this bound on
        # its /dev/shm in bytes; None: jobs use the node's
        self.private_tmp = private_tmp
        self.cgroups = cgroups  # a cgroup per attempt (gpuqueue.attempt.cgroup); None: none
        self.give_up_s = give_up_s  # see _tail_failed
        self.shared = shared  # checkpoints between attempts (shared_root.py); None: this node's disk
        self.sweep_s = sweep_s  # how often finished jobs' folders are swept from it (0: never)
        self.local_sweep_s = local_sweep_s  # the same for this node's state_dir (worker_sweep.py)
        self.queue: Optional[str] = None  # this queue's id (the tag of the job folders), drawn at start
        self.node = node
        self.gpus = gpus
        self.pool = pool
        self.state_dir = state_dir
        self.heartbeat_s = heartbeat_s
        self.max_result_bytes = max_result_bytes
        self.identities = identities  # None: jobs run as this worker's own user
        self._own: set[tuple[str, int]] = set()  # (home|tmp, uid): the folders of uids made on this node
        self.instance = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.attempts: dict[tuple[str, int], LocalAttempt] = {}
        # attempts this worker claims or has claimed and is launching (not yet in self.attempts):
        # the heartbeat lists them, so the daemon tells a slow launch from a lost one
        self.claimed: set[tuple[str, int]] = set()
        self.pending_stops: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()
        # jobs whose folders a launch is making (job -> launches) or the sweep is deleting; a
        # launch waits for the sweep (_swept), the sweep keeps off a launching or live job
        self._launching: dict[str, int] = {}
        self._sweeping: set[str] = set()
        self._swept = threading.Condition(self._lock)
        self._shm_removals: dict[int, threading.Event] = {}  # AttemptTailer._remove_shm
        self._shm_removed = threading.Condition(self._lock)
        self._launches: "queue.Queue[tuple[dict[str, Any], Future[str]]]" = queue.Queue()
        self._stop = threading.Event()
        self._tail_wake = threading.Event()
        self._seq = 0
        self._leaving = False  # shutdown began: its beats say `stopping` (no new job comes here)
        self._threads: list[threading.Thread] = []
        self._forks: Optional[ForkServer] = None
        # jobs' own Ray clusters (rayjob.py), in their own /tmp, /var/tmp and /dev/shm where they get them,
        # this node's part of each in a cgroup of its own where attempts get one
        self.raynodes = RayNodes(store, node, self._identity, self._stop, state_dir, own_tmp=self._own_tmp,
                                 node_env=self._node_env, cgroups=cgroups)

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Register, then run the heartbeat, tail and launcher threads, and the sweepers of
        finished jobs' folders from this node's disk and from the shared root (worker_sweep.py)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.raynodes.sweep():  # what a former worker here left of jobs' own Ray (rayjob.py)
            log.info("ended the Ray of attempts a former worker of %s left", self.state_dir)
        self.beat()
        self.queue = queue_id(self.store)  # the tag of the job folders it writes
        loops = [self._beat_loop, self._tail_loop, self._launch_loop]
        if self.local_sweep_s > 0:
            loops.append(self._local_sweep_loop)
        if self.shared is not None:
            self.shared.queue = self.queue
            if self.sweep_s > 0:
                loops.append(self._sweep_loop)
        for target in loops:
            t = threading.Thread(target=target, name=target.__name__, daemon=True)
            t.start()
            self._threads.append(t)

    def shutdown(self, grace_s: float = 15.0) -> None:
        """Stop our attempts (they are queued again elsewhere), report them, say goodbye; the
        log says which attempts were stopped and how it ended."""
        self._leaving = True
        try:  # before its jobs are stopped: the scheduler sends none of them (or any other) back here
            self.beat()
        except redis.RedisError:
            pass  # the store is down: nothing is placed anywhere meanwhile
        with self._lock:
            live = list(self.attempts.values())
        if live:
            log.info("stopping: %d attempts run here (%s); each gets %g s to stop, then the scheduler queues its "
                     "job again", len(live), ", ".join(f"{la.job_id}/{la.number}" for la in live), min(grace_s, 10.0))
        for la in live:
            self._signal_stop(la, "terminated", min(grace_s, 10.0))
        deadline = time.time() + grace_s + 2
        while time.time() < deadline and self.attempts:
            time.sleep(0.1)
        self._stop.set()
        if not self.raynodes.wait_ended(10.0):  # this node's parts of other nodes' jobs: their cgroups killed
            log.warning("the Ray of some jobs whose first node is another had not ended after 10 s; the next worker "
                        "here ends them as it starts")
        with self._lock:
            left = [f"{j}/{n}" for j, n in self.attempts]
        if left:
            log.warning("%d attempts had not reported their end after %g s (%s): their runners end with this worker, "
                        "and the scheduler counts them lost", len(left), grace_s + 2, ", ".join(left))
        if self.cgroups is not None and not left:
            self.cgroups.close()
        try:
            self.beat(stopped=True)
        except redis.RedisError as e:
            log.warning("stopped; could not sign node %s off (redis unavailable: %s): the scheduler counts it lost "
                        "after its --node-timeout", self.node, e)
            return
        log.info("stopped; node %s signed off", self.node)

    def _sweep_loop(self) -> None:
        assert self.shared is not None
        Sweeper(self.store, self.shared, self.instance, self.sweep_s).run(self._stop)

    def _local_sweep_loop(self) -> None:
        try:
            sweeper = self.local_sweeper()
        except RuntimeError as e:
            log.error("%s", e)
            return
        sweeper.run(self._stop)

    def local_sweeper(self) -> LocalSweeper:
        """The sweeper of this node's job folders, kept off the jobs that run or are being
        launched here."""
        return LocalSweeper(self.store, self.state_dir, self.queue, self._hold_for_sweep, self._release_sweep,
                            self.local_sweep_s)

    def _hold_for_sweep(self, job_id: str) -> bool:
        """Whether the folders of ``job_id`` may be deleted now (no attempt of it runs or is being
        launched here); if so, launches of it wait until :meth:`_release_sweep`."""
        with self._lock:
            if job_id in self._launching or any(j == job_id for j, _ in self.attempts):
                return False
            self._sweeping.add(job_id)
            return True

    def _release_sweep(self, job_id: str) -> None:
        with self._lock:
            self._sweeping.discard(job_id)
            self._swept.notify_all()

    def beat(self, stopped: bool = False) -> None:
        """Write the heartbeat (inventory, a counter, the attempts running here and those claimed
        and being launched: an attempt is in one list or the other from before its claim is
        written until after its end is, see ``daemon_reconcile.py``)."""
        self._seq += 1
        with self._lock:  # one view of both: a launch moves an attempt from one to the other under it
            running = [f"{j}:{n}" for j, n in self.attempts]
            launching = [f"{j}:{n}" for j, n in self.claimed if (j, n) not in self.attempts]
        hb = {"instance": self.instance, "pool": self.pool, "gpus": self.gpus, "seq": self._seq,
              "time": time.time(), "running": running, "launching": launching, "stopped": stopped,
              "stopping": self._leaving}
        p = self.store.r.pipeline(transaction=True)
        p.sadd(self.store.k("nodes"), self.node)
        p.set(self.store.k("hb", self.node), json.dumps(hb), px=86_400_000)
        p.execute()

    def _beat_loop(self) -> None:
        """Heartbeat, stop requests and fences every ``heartbeat_s``. An outage of the store is
        logged once (then how often it came, and its end), not at every beat; so is an
        unexpected error, once per distinct error with its traceback, then how often it came
        and its end (:class:`Repeats`, both)."""
        down = Repeats(log, every_s=60.0)  # during a long outage: how often, at a growing interval
        failing = Repeats(log, before="heartbeat: the error before came %d more times")
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.beat()
                self._read_control()
                self._check_fences()
            except redis.RedisError as e:
                down.seen(f"redis unavailable ({e}): this node's heartbeats and stop requests wait until it is "
                          f"back (check the store's Redis server); jobs go on")
                continue
            except Exception as e:  # noqa: BLE001
                text = f"{type(e).__name__}: {e}"
                failing.seen(text, logging.ERROR, exc_info=e,
                             line=f"heartbeat failed: {text} (logged once until the error changes)")
                continue
            down.over("redis is available again: heartbeats go on")
            failing.over("heartbeats go on", after=" again, after {rounds} failed rounds in {seconds:.1f} s "
                         "(last: {last})")

    # -- launching ------------------------------------------------------------------------
    def launch(self, msg: dict[str, Any]) -> str:
        """Claim and start one attempt (called from a Celery task). Returns what happened."""
        job_id, number = msg["job_id"], int(msg["attempt"])
        if msg.get("node") != self.node:
            return "wrong node"
        with self._lock:  # listed before the claim is written: no beat after the claim omits it
            self.claimed.add((job_id, number))
        try:
            self.store.exec([["SET", self.store.k("claim", job_id, number), self.instance]],
                            guards=[self.fence(job_id, number), (self.store.k("claim", job_id, number), "")])
        except Fenced as e:
            self._unclaim(job_id, number)
            log.info("attempt %s/%s refused: %s", job_id, number, e)
            return "refused"
        except BaseException:
            self._unclaim(job_id, number)
            raise
        forks = self._forks
        if forks is not None and forks.alive():
            return self._spawn_or_fail(msg, forks)  # in this (Celery) thread: no hand-over
        fut: Future[str] = Future()
        self._launches.put((msg, fut))  # the launch thread starts a fork server first
        return fut.result(timeout=120)

    def _unclaim(self, job_id: str, number: int) -> None:
        """The launch of a claimed attempt is over: it runs (``self.attempts`` lists it), or it
        failed (its exit report written), or it was refused."""
        with self._lock:
            self.claimed.discard((job_id, number))

    def _spawn_or_fail(self, msg: dict[str, Any], forks: ForkServer) -> str:
        try:
            return self._spawn_or_fail_claimed(msg, forks)
        finally:
            self._unclaim(msg["job_id"], int(msg["attempt"]))

    def _spawn_or_fail_claimed(self, msg: dict[str, Any], forks: ForkServer) -> str:
        try:
            return self._spawn(msg, forks)
        except launchfail.LaunchFailed as e:  # the job's identity or folders: the daemon decides on a retry
            log.warning("attempt %s/%s cannot start: %s", msg["job_id"], msg["attempt"], e)
            self._report_exit_error(msg["job_id"], int(msg["attempt"]), str(e), e.rec)
            return "failed"
        except StorageError as e:  # the checkpoints from the shared root: the admin's text (paths) logged
            log.warning("attempt %s/%s cannot start: %s", msg["job_id"], msg["attempt"], e)
            self._report_exit_error(msg["job_id"], int(msg["attempt"]), f"cannot start the job on {self.node}: "
                                    f"{e.public}; the admin finds the cause in that worker's log")
            return "failed"
        except Exception as e:  # noqa: BLE001 - report it as the attempt's failure
            log.exception("launch failed")
            self._report_exit_error(msg["job_id"], int(msg["attempt"]), f"cannot start the job on {self.node}: {e}")
            return "failed"

    def _launch_loop(self) -> None:
        # Runners are forked by a fork server started from this one long-lived thread:
        # PR_SET_PDEATHSIG fires when the thread that started it exits, so it must be one that
        # lives as long as the worker. Launches go to the server from the Celery threads; this
        # thread (re)starts the server and runs the launches that came while it was down.
        while not self._stop.is_set():
            if self._forks is None or not self._forks.alive():
                self._forks = self._new_fork_server()
            try:
                msg, fut = self._launches.get(timeout=0.5)
            except queue.Empty:
                continue
            if not self._forks.alive():  # it died while this thread waited (the launch came for that)
                self._forks = self._new_fork_server()
            fut.set_result(self._spawn_or_fail(msg, self._forks))
        if self._forks is not None:
            self._forks.close()

    def _new_fork_server(self) -> ForkServer:
        """The runner fork server (``forkserver.py``): the interpreter and ``gpuqueue.attempt.runner``
        loaded once, so a launch costs a fork made ahead of time, not an interpreter start (~35 ms of CPU)."""
        return ForkServer(runner_env(), on_exit=self._tail_wake.set)

    def _spawn(self, msg: dict[str, Any], forks: ForkServer) -> str:
        job_id = msg["job_id"]
        self._launch_begins(job_id)
        try:
            return self._spawn_held(msg, forks)
        finally:
            self._launch_ends(job_id)

    def _launch_begins(self, job_id: str) -> None:
        """Keep the sweep off ``job_id``'s folders while a launch makes them (after waiting for a
        sweep that is deleting them, if one is)."""
        with self._lock:
            while job_id in self._sweeping:
                self._swept.wait()
            self._launching[job_id] = self._launching.get(job_id, 0) + 1

    def _launch_ends(self, job_id: str) -> None:
        with self._lock:
            n = self._launching.pop(job_id) - 1
            if n:
                self._launching[job_id] = n

    def _spawn_held(self, msg: dict[str, Any], forks: ForkServer) -> str:
        job_id, number = msg["job_id"], int(msg["attempt"])
        spec = JobSpec.model_validate(msg["spec"])
        ident = self._identity(job_id)
        if ident is not None:  # what its uid left in /dev/shm stays from now on: the job may use it
            self._end_shm_removal(ident.uid)
        paths = attempt_paths(self.state_dir, job_id, number, split=ident is not None)
        payload: Optional[bytes] = None
        if spec.kind == "cell":
            if not os.path.lexists(paths.job / "payload.pkl"):  # <job> cannot be a job's link: its parent is ours
                # rb decodes nothing (decode_responses=False), so a value is bytes; redis-py
                # types every reply as bytes | str
                payload = cast(Optional[bytes], self.store.rb.get(self.store.k("payload", job_id)))
                if payload is None:
                    raise RuntimeError("its cell payload is missing from the store")
        home = tmpdir = None
        try:
            if ident is not None:
                prepare_owned(self.state_dir, job_id, number, ident.uid, ident.gid, payload)
                here = self._node_env(ident)
                home, tmpdir = here.get("HOME"), here["TMPDIR"]
            else:
                paths.records.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise launchfail.LaunchFailed(launchfail.record(launchfail.FOLDER, e, node=self.node)) from e
        if self.queue is not None:  # as soon as the folder is made: the local sweep deletes only
            tag_job_folder(job_dir(self.state_dir, job_id), self.queue)  # folders of this queue
        if ident is None and payload is not None:
            write_bytes_atomic(paths.job / "payload.pkl", payload)
        _write_json(job_dir(self.state_dir, job_id) / "spec.json", msg["spec"])
        if self.shared is not None:  # the checkpoints earlier attempts saved, from any node
            pulled = self.shared.pull(job_id, paths.job, ident.uid if ident else None, ident.gid if ident else None)
            if pulled:
                log.info("attempt %s/%s: checkpoints %s from the shared root", job_id, number, ", ".join(pulled))
        resume = shared_resume.fetch(self.shared, self.store, self.node, job_id, spec, paths.job,
                                     ident.uid if ident else None, ident.gid if ident else None)  # --resume-from JOB_ID
        if resume:
            log.info("attempt %s/%s: resumes from %s, copied from the shared root", job_id, number, spec.resume_from)
        launch = build_launch(job_id, spec, paths.job, paths.attempt, number, list(msg.get("devices", [])), self.node,
                              identity=ident, home=home, tmpdir=tmpdir, placement=msg.get("placement"),
                              resume_from=resume)
        several = len(msg.get("placement") or {}) > 1
        # not for a job on several nodes with a shared Ray, whose folders (its sockets) are in the node's /tmp
        own_tmp = bool(ident is not None and tmpdir and self.private_tmp is not None and not (several and shared_ray()))
        links: dict[str, str] = {}
        if several and not shared_ray():  # the head of the job's own Ray (rayjob.py), in the job's own /tmp
            ray_env, links = self.raynodes.head(job_id, number, ident, tmpdir if own_tmp else None)
            launch["env"].update(ray_env)
        if own_tmp:
            launch["private_tmp"] = {"tmp": tmpdir, "shm_bytes": self.private_tmp, "links": links}
        _write_json(paths.records / "launch.json", launch)
        stop = self.pending_stops.pop((job_id, number), None)
        if stop:
            write_json_atomic(paths.records / "control.json", stop)
        cgroup = self._new_cgroup(job_id, number)
        try:
            proc = forks.launch(paths.records, cgroup=cgroup)  # go: the runner reads launch.json now
        except BaseException:
            if cgroup is not None:
                try:
                    end_cgroup(cgroup, wait_s=2.0)
                except OSError as e:  # the launch's own error is the one to report
                    log.warning("attempt %s/%s: cannot remove its cgroup %s (%s)", job_id, number, cgroup, e)
            raise
        with self._lock:
            self.attempts[(job_id, number)] = LocalAttempt(job_id, number, spec.kind, paths.records, proc, paths, ident,
                                                           cgroup=cgroup)
        log.info("attempt %s/%s started: GPUs %s, as %s, runner pid %s", job_id, number,
                 ",".join(str(d) for d in msg.get("devices", [])) or "none",
                 f"uid {ident.uid} (user {ident.user})" if ident else f"uid {os.geteuid()}", proc.pid)
        return "started"

    def _new_cgroup(self, job_id: str, number: int) -> Optional[Path]:
        """The attempt's own cgroup, which its runner enters (None: no cgroups here, or it could
        not be made: the attempt runs as it would without, and its owner is told so)."""
        if self.cgroups is None:
            return None
        try:
            return self.cgroups.create(job_id, number)
        except OSError as e:
            log.warning("attempt %s/%s: cannot make its cgroup (%s); it runs without one", job_id, number, e)
            self._tell_no_cgroup(job_id, number, f"the worker cannot make one: {e.strerror or e}")
            return None

    def _tell_no_cgroup(self, job_id: str, number: int, why: str) -> None:
        """Tell the job's owner, in its events (``gpuqueue logs``, the cell), that the attempt runs
        in no cgroup on this node (``why``: the error's words, never a path of the node's), where
        every other attempt here has one."""
        message = (f"on node {self.node} the job's processes are held in no cgroup ({why}): its runner still ends "
                   f"them when the attempt ends, but if the runner is killed together with the node's runner fork "
                   f"server, what the job started may run on there")
        failed = self.store.warn_job(job_id, self.node, message, self.fence(job_id, number))
        if failed:
            log.warning("attempt %s/%s: cannot tell the job that it runs in no cgroup (%s)", job_id, number, failed)

    def _node_env(self, ident: Optional[Identity]) -> dict[str, str]:
        """The environment of ``ident``'s jobs that names its own folders on this node (made if need
        be): ``TMPDIR``, its temporary folder; ``HOME``, where the identity has no home of its own
        (a dynamic identity's). A rank of a job on several nodes gets its own node's
        (``gpuqueue.cluster.rayjob``). Empty where jobs run as the worker's own user."""
        if ident is None:
            return {}
        env = {"TMPDIR": str(self._own_folder("tmp", ident))}
        if not ident.home:
            env["HOME"] = str(self._own_folder("home", ident))
        return env

    def _own_tmp(self, ident: Optional[Identity]) -> Optional[tuple[str, int]]:
        """Where ``ident``'s jobs get their own ``/tmp``, ``/var/tmp`` and ``/dev/shm`` here: its
        temporary folder (made if need be) and the bound of its ``/dev/shm``; else None."""
        if ident is None or self.private_tmp is None:
            return None
        return str(self._own_folder("tmp", ident)), self.private_tmp

    def _identity(self, job_id: str) -> Optional[Identity]:
        """The identity the job's owner's jobs run as here (None: this worker's own user)."""
        if self.identities is None:
            return None
        owner = self.store.get_job(job_id)
        if owner is None:
            raise RuntimeError("its record is missing from the store")
        try:
            return self.identities.resolve(owner.owner)
        except IdentityError as e:
            raise launchfail.LaunchFailed(launchfail.record(launchfail.IDENTITY, e, node=self.node)) from None

    def _own_folder(self, kind: str, ident: Identity) -> Path:
        """``<state>/<kind>/<uid>``, the identity's own folder on this node (mode 700 in a
        parent of mode 711), kept between its jobs (caches): ``home``, the HOME of a dynamic
        identity; ``tmp``, the TMPDIR of every identity. Not the node's ``/tmp``: another user's
        job can plant there, under a name it can predict, what this user's job takes as its own
        (``<tempdir>/torchinductor_<user>``: PyTorch loads the compiled kernels it finds there),
        and list what this user's jobs leave there."""
        parent = self.state_dir / kind
        if (kind, ident.uid) not in self._own:
            own_folder(parent, 0o711)
            with OwnedDir(parent, [str(ident.uid)], ident.uid, ident.gid, create=True):
                pass
            self._own.add((kind, ident.uid))
        return parent / str(ident.uid)

    # -- stopping -------------------------------------------------------------------------
    def _read_control(self) -> None:
        key = self.store.k("ctl", self.node)
        while True:
            # one value (no count: never a list), as str or bytes; redis-py types count's list too
            raw = cast(Union[str, bytes, None], self.store.r.lpop(key))
            if raw is None:
                return
            msg = json.loads(raw)
            with self._lock:
                la = self.attempts.get((msg["job"], int(msg["attempt"])))
            if la is None:
                self.pending_stops[(msg["job"], int(msg["attempt"]))] = {"reason": msg["reason"], "grace_s": msg["grace_s"], "time": time.time()}
            else:
                self._signal_stop(la, msg["reason"], float(msg["grace_s"]))

    def _check_fences(self) -> None:
        with self._lock:
            live = [la for la in self.attempts.values() if not la.fenced]
        if not live:
            return
        values = self.store.r.mget([self.store.k("fence", la.job_id) for la in live])
        for la, v in zip(live, values):
            if v != f"{la.number}:{self.node}":
                log.warning("attempt %s/%s was superseded (%s): stopping it", la.job_id, la.number, v)
                la.fenced = True
                self._signal_stop(la, "fenced", 5.0)

def _write_json(path: Path, data: Any) -> None:
    """Write then rename, without fsync: these files live as long as the attempt, and a node
    that crashes loses its attempts anyway (they are requeued). Saves milliseconds per launch."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


_AGENT: Optional[NodeAgent] = None


def make_celery(broker_url: str, events: Optional[bool] = None) -> Any:
    """The Celery app with the launch task bound to this process's node agent."""
    app = make_app(broker_url, events)
    # Redis has per-consumer QoS: Celery skips this step after a reconnect anyway, with a log line
    # of its internals at each one
    app.conf.worker_enable_prefetch_count_reduction = False

    @app.task(name=TASK_NAME, acks_late=True)
    def launch_attempt(**msg: Any) -> str:
        if _AGENT is None:
            raise RuntimeError("no node agent in this process")
        if msg.get("ray_join"):  # a node of a gang joins the attempt's own Ray (rayjob.py)
            return _AGENT.raynodes.join(msg)
        return _AGENT.launch(msg)

    return app


def attempt_cgroups(state_dir: Path, node: str) -> Optional[AttemptCgroups]:
    """This worker's attempt cgroups (``gpuqueue.attempt.cgroup``), those a previous worker of
    ``state_dir`` left ended; None, with one log line that says why and what the admin can do,
    where it cannot make them."""
    try:
        cgroups = AttemptCgroups.open(state_dir, node)
        swept = cgroups.sweep()
    except (CgroupsUnavailable, OSError) as e:
        log.warning("no cgroup per attempt: %s. A job's processes that outlive both its runner and the runner fork "
                    "server run on; to end them too, %s", e, CGROUP_REMEDY)
        return None
    for name, held, left in swept:
        if held or left:
            log.warning("cgroup %s, left by an earlier worker: %d processes ended%s", name, held - left,
                        f", {left} still run (stuck in the kernel?)" if left else "")
    log.info("a cgroup per attempt under %s", cgroups.base)
    return cgroups


def private_tmp(args: Any, state_dir: Path, shared_url: Optional[str]) -> Optional[int]:
    """The bound of each attempt's own ``/dev/shm`` in bytes where the jobs get their own ``/tmp``,
    ``/var/tmp`` and ``/dev/shm`` (``--private-tmp``, ``gpuqueue.attempt.privtmp``); None, with one
    log line that says why and what the admin can do, where they cannot."""
    if args.private_tmp == "off":
        log.warning("--private-tmp off: /tmp, /var/tmp and /dev/shm are every user's on this node (a job can "
                    "squat the names another user's job will use there, and read what it leaves readable)")
        return None
    needed = [str(state_dir)] + ([shared_url] if shared_url and "://" not in shared_url else [])
    why = privtmp.hidden(needed)
    if why is None:
        why = privtmp.probe(runner_env())
        fix = privtmp.REMEDY
    else:
        why = f"the jobs need {why}, which their own /tmp would hide"
        fix = "use a --state-dir (and --shared-dir) outside /tmp, /var/tmp and /dev/shm"
    if why is not None:
        log.warning("jobs run with this node's /tmp, /var/tmp and /dev/shm, which are every user's (a job can squat "
                    "the names another user's job will use there): no mount namespace per job, as %s. To give each "
                    "job its own, %s", why, fix)
        return None
    shm = int(args.job_shm_gb * 2**30) if args.job_shm_gb else privtmp.half_memory()
    log.info("each job gets its own /tmp, /var/tmp and /dev/shm (at most %.1f GB)", shm / 2**30)
    return shm


def cli_main(argv: list[str]) -> int:
    """Entry point of ``gpuqueue worker``."""
    global _AGENT
    args = build_parser().parse_args(argv)
    from .envcheck import start_process

    if not start_process("worker", log, args.log_level, component="worker", node=args.node):
        return 2
    try:
        url = redis_url.from_args(args)
    except ValueError as e:
        print(f"gpuqueue worker: {e}", file=sys.stderr)
        return 2
    try:
        gpus = local_gpu_count(args.gpus)
    except ValueError as e:
        print(f"gpuqueue worker: {e}", file=sys.stderr)
        return 2
    if gpus == 0 and args.gpus is None and not os.environ.get("GPUQUEUE_GPUS"):
        why = "NVML is not available (no NVIDIA driver, or no nvidia-ml-py)" if nvml_gpu_count() is None \
            else "NVML sees no GPU"
        log.warning("%s: this node offers 0 GPUs and runs only jobs that ask for none; if it has GPUs, fix the "
                    "driver or declare them with --gpus N ($GPUQUEUE_GPUS)", why)
    os.environ.pop(redis_url.ENV, None)  # nothing this process starts inherits it
    not_dumpable()  # /proc/<worker>/environ and memory: root's, whatever uid the jobs run as
    home = Path("/var/lib/gpuqueue") if os.geteuid() == 0 else Path.home() / ".local/share/gpuqueue"
    state_dir = Path(args.state_dir or os.environ.get("GPUQUEUE_STATE_DIR") or home / f"worker-{args.node}")
    try:  # one worker per state folder, until this process ends (worker_lock.py)
        lock_state_dir(state_dir, args.node)
    except StateDirBusy as e:
        print(f"gpuqueue worker: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gpuqueue worker: cannot use the state folder {state_dir} ({e.strerror or e}): give a --state-dir "
              f"this user may create and write", file=sys.stderr)
        return 2
    store = RedisStore(url, args.prefix)
    try:
        uid_range = identities.parse_range(args.uid_range)
        idents = identities.from_option(args.identities, store.r, store.k("identity"), uid_range)
    except (ValueError, IdentityError) as e:
        print(f"gpuqueue worker: {e}", file=sys.stderr)
        return 2
    if idents is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        closed = unreachable(state_dir)
        if closed is not None:
            print(f"gpuqueue worker: jobs run under their users' own identities, which must reach {state_dir}, "
                  f"but {closed} is mode {os.stat(closed).st_mode & 0o777:03o}: use a --state-dir every user may "
                  f"traverse (e.g. /var/lib/gpuqueue), or chmod o+x {closed}", file=sys.stderr)
            return 2
        open_to = open_to_others(state_dir)
        if open_to is not None:
            print(f"gpuqueue worker: jobs run under their users' own identities, whose folders this worker makes "
                  f"in {state_dir} as root, but {open_to}: another user could put there a link that root "
                  f"follows, or take the folder; use a --state-dir that only root may change (e.g. "
                  f"/var/lib/gpuqueue), or chown root and chmod go-w that folder", file=sys.stderr)
            return 2
    elif os.geteuid() != 0:
        log.warning(NOT_ROOT_WARNING, os.geteuid())
    else:
        log.warning("--identities none: every job runs as root on this node, with no isolation between users "
                    "and full access to the node; use it only where nothing else runs")
    shared = None
    shared_url = args.shared_dir or os.environ.get("GPUQUEUE_SHARED_DIR")
    if shared_url:
        try:
            shared = SharedRoot(shared_url, load_options(args.shared_options), max_bytes=int(args.shared_max_gb * 1e9))
            shared.check()
        except (ValueError, OSError, StorageError) as e:
            print(f"gpuqueue worker: {e}", file=sys.stderr)
            return 2
    # e.g. the API's user of users.acl: it joined the node, then Celery died of NOPERM on its queue
    wrong_user = redis_url.wrong_user(store.r, url, "worker", [store.k("hb", args.node), node_queue(args.node)])
    if wrong_user:
        print(f"gpuqueue worker: {wrong_user}", file=sys.stderr)
        return 2
    cgroups = attempt_cgroups(state_dir, args.node)
    own_tmp = private_tmp(args, state_dir, shared_url) if idents is not None else None
    _AGENT = NodeAgent(store, args.node, gpus, args.pool, state_dir, args.heartbeat, identities=idents, shared=shared,
                       sweep_s=args.shared_sweep, local_sweep_s=args.local_sweep, give_up_s=args.give_up_after,
                       cgroups=cgroups, private_tmp=own_tmp)
    try:
        _AGENT.start()
    except redis.RedisError as e:
        print(f"gpuqueue worker: cannot reach Redis at {redis_url.mask(url)}: {redis_url.mask(str(e))}", file=sys.stderr)
        return 1
    log.info("node %s: %s, queue %s, jobs in %s, checkpoints %s, jobs run as %s", args.node, count(gpus, "GPU"),
             node_queue(args.node), state_dir,
             f"on the shared root {shared.url}" if shared else "on this node only (no --shared-dir)",
             f"their users' own identities ({args.identities})" if idents is not None else f"uid {os.geteuid()}")
    if args.metrics_port:
        from ..observability import metrics

        try:
            metrics.serve_metrics(args.metrics_port, metrics.process_registry("worker", node=args.node))
        except OSError as e:
            _AGENT.shutdown()  # signs the node off again
            print(f"gpuqueue worker: {metrics.port_error(args.metrics_port, e)}", file=sys.stderr)
            return 1
    if os.geteuid() == 0:  # by design (it switches jobs to their users); Celery's warning is noise here
        from celery.exceptions import SecurityWarning

        warnings.filterwarnings("ignore", category=SecurityWarning)
    events = args.celery_events or events_enabled()
    app = make_celery(url, events)
    worker = app.Worker(
        hostname=f"{args.node}@gpuqueue", queues=[node_queue(args.node)], pool_cls="threads",
        concurrency=args.concurrency, loglevel=args.log_level.upper(), without_heartbeat=not events,
        without_mingle=True, without_gossip=True, quiet=True,
    )
    # Celery's note, at every lost broker connection, that a setting's default changes in Celery 6:
    # several lines an admin can do nothing about (launch tasks end in milliseconds). After the
    # Worker's logging setup, which turns Celery's deprecation warnings to "always"
    warnings.filterwarnings("ignore", message=r"\s*In Celery 5\.1 we introduced an optional breaking change")
    # two lines per launch naming only Celery's task id: the agent logs each attempt's start and end
    for name in ("celery.worker.strategy", "celery.app.trace"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        worker.start()
    finally:
        _AGENT.shutdown()
    return int(getattr(worker, "exitcode", 0) or 0)
