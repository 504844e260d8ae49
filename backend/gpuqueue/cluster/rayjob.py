"""A Ray cluster of the job's own for each multi-node attempt, under its owner's identity.

Where the workers are given no shared Ray (no ``RAY_ADDRESS`` / ``GPUQUEUE_RAY_ADDRESS`` in the
worker's environment), a job the scheduler gang-placed on several nodes (``--nodes M``) runs its
ranks on a Ray cluster made for that attempt alone:

* First node: the worker makes a private folder (``gqr-<random>``, mode 700, the owner's)
  holding the attempt's Ray token (mode 600), picks the head's port, publishes the head's
  address in the store (``rayhead:<job>:<attempt>``, fenced) and gives the launcher
  ``GPUQUEUE_RAY_HEAD``, ``GPUQUEUE_RAY_DIR``, ``RAY_AUTH_MODE=token`` and
  ``RAY_AUTH_TOKEN_PATH`` (a path, never the token), with no metrics export (``RAY_ENV``), and
  ``GPUQUEUE_NODE_ENV`` (the job's ``TMPDIR``, a dynamic identity's ``HOME``: this node's). The
  launcher, already running as the owner in the attempt's process tree, starts ``ray start
  --head`` (``gpuqueue.job.raynodes``).
* Other nodes: the daemon sends each a ``ray_join`` message; its worker makes the same private
  folder and token, waits (``JOIN_WAIT_S``) for the head's address and starts ``ray start
  --address`` under the owner's identity with the node's ``gpuqueue-node-<name>`` resource and
  ``GPUQUEUE_NODE_ENV`` this node's: the job's ranks here take those values of the node's in place
  of the first node's, and make their scratch folders in that ``TMPDIR`` (``gpuqueue.job.raynodes``;
  Ray's own processes keep the job's /tmp). The agents' ports are picked here too
  (``agent_port_args``), and a ``ray start`` that exits within the wait is started again
  (``raynodes.RESTART_NOTE``), as the launcher starts its head again.
  Where the worker makes attempt cgroups (``gpuqueue.attempt.cgroup``), it makes one for this
  part of the attempt (``join-<job>-<attempt>``, beside its own attempts' ``job-...``) and the
  child that starts Ray enters it as the worker's user (root), before it becomes the owner and
  execs: the raylet, every Ray worker (the job's ranks there) and all they start are born in it,
  as a one-node job's processes are in its attempt's. Where it cannot make that cgroup, the
  job's events say so (a ``warning`` naming the node: its processes there are ended by their mark
  alone).
* Every node: once the attempt's fence moves on (its end settled, a cancel, a lost node, a
  requeue) or the worker stops, the join's cgroup is killed at once (``cgroup.kill``: what a
  rank started, even detached with an empty environment, ends too), then every process of the
  owner's uid that carries the folder's mark (``GPUQUEUE_RAY_DIR`` in its environment; all
  there is where cgroups are not) is killed and the folder removed. On the first node the
  head and its ranks are in the attempt's own cgroup. A worker killed outright leaves both to
  the next worker of its state folder, which ends the cgroups (``AttemptCgroups.sweep``) and
  the marked processes of the folders it lists as it starts.

Where the worker gives jobs their own ``/tmp``, ``/var/tmp`` and ``/dev/shm``
(``gpuqueue.attempt.privtmp``), a multi-node attempt has them on every node of its gang: the
private folder is made in the identity's own temporary folder (``<state>/tmp/<uid>/gqr-<random>``
on the node, ``/tmp/gqr-<random>`` inside the job's namespace: Ray's Unix socket paths, at most
107 bytes, stay short), and every path the job's processes are given (``GPUQUEUE_RAY_DIR``, the
mark; ``RAY_AUTH_TOKEN_PATH``; Ray's ``--temp-dir`` and ``HOME``) is the one inside. On the first
node the runner enters the namespaces before it starts the launcher, as for a one-node job; on
the others the worker starts ``ray start --address`` through ``privtmp.exec_as``, which enters
them as root and then becomes the owner, so the raylet and every Ray worker there (the job's
ranks) share them. The node's ``/tmp`` and ``/dev/shm`` keep nothing of the job. Where a node
cannot enter them at the time (the worker's start-up probe passed), ``/tmp/gqr-<random>`` is made
a link to the folder there and the job runs with the node's, as with ``--private-tmp off``; the
link goes with the folder. Without private temporary folders (``--private-tmp off``, a worker
that cannot make them, a shared Ray), the folder is ``/tmp/gqr-<random>`` on the node itself.

The token is ``HMAC-SHA256(cluster secret, "ray:<job>:<attempt>")``: each worker derives it
locally from a secret made once in the store (``ray-secret``, which jobs cannot read); it is
written only into the owner's private file, never in a message, command line, log or the
store. Another user's job that reaches the head's port has no token and is refused.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from ..attempt import privtmp
from ..attempt.cgroup import AttemptCgroups, end as end_cgroup, enter as enter_cgroup
from ..attempt.identity import Identity
from ..attempt.launch import package_root
from ..attempt.removal import remove_tree
from ..job.rayletwatch import RayletWatch
from ..job.raynodes import NODE_ENV, RESTART_NOTE, agent_port_args, node_resource
from .forkserver import die_with_parent
from .rayfiles import log_tail, open_log, remove_scratch
from .redis_store import RedisStore

log = logging.getLogger("gpuqueue.worker")

# a join waits this long for the head, and the launcher as long for every node to join; a join's Ray
# that exits meanwhile is started again (RESTART_NOTE)
JOIN_WAIT_S = float(os.environ.get("GPUQUEUE_RAY_JOIN_WAIT_S", "120"))
MAX_RESTARTS = 5  # a join's Ray that exits at start is started again at most this often (RESTART_NOTE)
MARK = "GPUQUEUE_RAY_DIR"  # in the environment of every process of the job's Ray on a node
# Ray's settings for every process of a job's own Ray, on every node: token authentication, no
# usage report, and no Prometheus metrics export (the dashboard agent's metrics port, where Ray
# has its dashboard packages, answers anyone without the token; nothing scrapes it)
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0", "RAY_enable_metrics_collection": "0"}


def shared_ray(environ: Optional[dict[str, str]] = None) -> bool:
    """Whether this worker was given a shared Ray cluster (the multi-node jobs then use it)."""
    env = os.environ if environ is None else environ
    return bool(env.get("RAY_ADDRESS") or env.get("GPUQUEUE_RAY_ADDRESS"))


def cluster_secret(store: RedisStore) -> bytes:
    """The queue's secret for Ray tokens: made once (SET NX), read from the store afterwards."""
    key = store.k("ray-secret")
    store.r.set(key, secrets.token_hex(32), nx=True)
    value = store.r.get(key)
    if not value:
        raise RuntimeError("the store has no ray-secret")
    return value.encode() if isinstance(value, str) else bytes(value)


def attempt_token(secret: bytes, job_id: str, attempt: int) -> str:
    """The Ray token of one attempt (every node of its gang derives the same)."""
    return hmac.new(secret, f"ray:{job_id}:{attempt}".encode(), hashlib.sha256).hexdigest()


def node_ip(store: RedisStore) -> str:
    """The address other nodes reach this one at: ``$GPUQUEUE_RAY_NODE_IP``, else the local
    address of a route to the store's host."""
    ip = os.environ.get("GPUQUEUE_RAY_NODE_IP")
    if ip:
        return ip
    kw = store.r.connection_pool.connection_kwargs
    host = kw.get("host")
    if host:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((socket.gethostbyname(str(host)), int(kw.get("port") or 6379)))
                return str(s.getsockname()[0])
        except OSError:
            pass
    return socket.gethostbyname(socket.gethostname())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def head_key(store: RedisStore, job_id: str, attempt: int) -> str:
    return store.k("rayhead", job_id, attempt)


class RayNodes:
    """The worker's side of the jobs' own Ray clusters (one per multi-node attempt)."""

    def __init__(self, store: RedisStore, node: str, identity: Callable[[str], Optional[Identity]],
                 stop: threading.Event, state_dir: Path, poll_s: float = 0.5,
                 own_tmp: Optional[Callable[[Optional[Identity]], Optional[tuple[str, int]]]] = None,
                 cgroups: Optional[AttemptCgroups] = None,
                 node_env: Optional[Callable[[Optional[Identity]], dict[str, str]]] = None):
        self.store = store
        # identity -> what names its jobs' own folders on this node in their environment (TMPDIR,
        # a dynamic identity's HOME): the job's ranks here get these, not the first node's
        self.node_env = node_env or (lambda ident: {})
        # the worker's attempt cgroups (gpuqueue.attempt.cgroup): each join's processes are held in
        # one of its own there (``join-<job>-<attempt>``); None: no cgroups here, only the mark
        self.cgroups = cgroups
        # identity -> (its own temporary folder on this node, the bound of its /dev/shm in bytes)
        # where its jobs get /tmp, /var/tmp and /dev/shm of their own (privtmp); None: the node's
        self.own_tmp = own_tmp
        # the private folders made here, one file each (name: the folder's, which no other folder
        # recorded here has, whatever its parent; content: its uid, or JSON {uid, folder, inside}),
        # so that a worker killed outright ends their Ray and removes them when it starts again
        self.made = state_dir / "ray-folders"
        self.node = node
        self.identity = identity  # job id -> the identity its owner's jobs run as here
        self.stop = stop
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._joins: set[tuple[str, int]] = set()
        self._ended = threading.Condition(self._lock)  # notified as a join is discarded from _joins

    def sweep(self) -> int:
        """At start: end the Ray and remove the folder of every attempt a former worker of this
        state folder left (killed outright). Returns how many."""
        try:
            names = os.listdir(self.made)
        except FileNotFoundError:
            return 0
        for name in names:
            uid, folder, inside = -1, Path("/tmp") / name, Path("/tmp") / name
            try:
                text = (self.made / name).read_text().strip()
                if text.startswith("{"):
                    rec = json.loads(text)
                    uid, folder, inside = int(rec["uid"]), Path(rec["folder"]), Path(rec["inside"])
                else:
                    uid = int(text)
            except (OSError, ValueError, KeyError, TypeError):
                uid = -1
            if name.startswith("gqr-") and folder.name == name and uid >= 0:
                end_ray(folder, uid, None, inside)
            (self.made / name).unlink(missing_ok=True)
        return len(names)

    def _record(self, name: str, uid: int, folder: Path, inside: Path) -> bool:
        """Record a private folder about to be made (``sweep``), under its name; False where a
        folder of that name is recorded already (another identity's, in its own ``within``): the
        caller picks another name, so that no record replaces another."""
        try:
            fd = os.open(self.made / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({"uid": uid, "folder": str(folder), "inside": str(inside)}).encode())
        finally:
            os.close(fd)
        return True

    def _forget(self, folder: Path) -> None:
        try:
            (self.made / folder.name).unlink(missing_ok=True)
        except OSError:
            pass

    # -- shared by both sides -------------------------------------------------------------
    def _private(self, job_id: str, attempt: int, ident: Optional[Identity],
                 within: Optional[str] = None) -> tuple[Path, Path]:
        """The attempt's private folder on this node, with its token file (the owner's, 700/600),
        as (its path on the node, its path for the job's processes). ``within``: the identity's
        own temporary folder, the job's ``/tmp`` (privtmp); None: the node's ``/tmp``. The folder
        is made and filled through descriptors: ``within`` is the owner's, who may put a link
        where root would write."""
        parent = Path(within) if within else Path("/tmp")
        uid = ident.uid if ident else os.geteuid()
        token = attempt_token(cluster_secret(self.store), job_id, attempt)
        self.made.mkdir(mode=0o700, exist_ok=True)
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            while True:
                name = f"gqr-{secrets.token_hex(4)}"  # short: Ray's socket paths are made in it
                folder, inside = parent / name, Path("/tmp") / name
                # the name is made unique on the node first (its record), then in ``parent``: each
                # identity's folders are in its own ``within``, where another's may have the same
                if not self._record(name, uid, folder, inside):
                    continue
                try:
                    os.mkdir(name, 0o700, dir_fd=pfd)
                    break
                except FileExistsError:  # in the node's /tmp: anyone's
                    self._forget(folder)
                except BaseException:
                    self._forget(folder)
                    raise
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            tfd = os.open("token", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
            try:
                os.write(tfd, token.encode())
                if ident is not None:
                    os.fchown(tfd, ident.uid, ident.gid)
            finally:
                os.close(tfd)
            os.fchmod(fd, 0o700)
            if ident is not None:
                os.fchown(fd, ident.uid, ident.gid)
        finally:
            os.close(fd)
        return folder, inside

    def _fence_holds(self, job_id: str, attempt: int, head: str) -> bool:
        return self.store.r.get(self.store.k("fence", job_id)) == f"{attempt}:{head}"

    def _watch(self, job_id: str, attempt: int, head: str, folder: Path, inside: Path, uid: int,
               proc: Optional[subprocess.Popen[bytes]] = None, cgroup: Optional[Path] = None,
               tmps: tuple[Path, ...] = (),
               restart: Optional[tuple[Callable[[], subprocess.Popen[bytes]], float, str]] = None) -> None:
        """Until the attempt is over here, then end its Ray processes on this node (all of
        ``cgroup``, the join's, at once; then what carries the mark) and remove the folder (and the
        scratch folders its ranks left in ``tmps``, the job's ``/tmp`` on this node). Runs
        in the thread that started ``proc``: its death signal (``PR_SET_PDEATHSIG``) comes when
        that thread ends. ``restart`` (start ``proc`` again, until when, the head's address): a
        join's ``ray start`` that exits before then, whose raylet ended, or whose head went away
        before its raylet ran (the launcher starts its head again) is started again once the head
        answers (``raynodes.RESTART_NOTE``), at most :data:`MAX_RESTARTS` times. Its wait ends a
        :data:`JOIN_WAIT_S` after the join's: the launcher waits that long again after it
        started its head again."""
        restarts = 0
        raylet = RayletWatch(proc.pid) if proc is not None else None
        try:
            while not self.stop.wait(self.poll_s):
                try:
                    if not self._fence_holds(job_id, attempt, head):
                        break
                except Exception:  # noqa: BLE001 - the store away: the attempt goes on meanwhile
                    continue
                if restart is None or proc is None or raylet is None:
                    continue
                if time.monotonic() > restart[1]:
                    restart = None  # the launcher no longer waits for this node (and no more scans of the node)
                    continue
                # its raylet gone, ray start would wait 30 s more for it; the head it was joining
                # gone, as long for that head's node (gpuqueue.job.rayletwatch)
                how = (f"exit code {proc.returncode}" if proc.poll() is not None
                       else "its raylet ended" if raylet.ended()
                       else "the head it was joining is gone" if not raylet.seen and not _answers(restart[2])
                       else None)
                if how is not None:
                    if restarts >= MAX_RESTARTS:
                        restart = None  # the launcher no longer waits for this node: it fails the job
                        continue
                    log.warning("attempt %s/%s: its Ray on this node exited at start (%s) before the job's ranks ran; "
                                "%s: %s", job_id, attempt, how, RESTART_NOTE, log_tail(folder, "ray.log", uid))
                    self.store.warn_job(job_id, self.node, f"on node {self.node} the job's Ray exited at start ({how}); "
                                        f"{RESTART_NOTE}", (self.store.k("fence", job_id), f"{attempt}:{head}"))
                    end_ray(folder, uid, proc, inside, remove=False)
                    if self._wait_head(job_id, attempt, head, restart[1]) is None:
                        restart = None  # not in time, or the attempt is over: the launcher fails the job
                        continue
                    proc = restart[0]()
                    raylet = RayletWatch(proc.pid)
                    restarts += 1
        finally:
            n = self._end_cgroup(job_id, attempt, cgroup) + end_ray(folder, uid, proc, inside)
            self._forget(folder)
            with self._lock:  # another attempt of the job joined here since: its ranks' are alike
                other = any(j == job_id and a != attempt for j, a in self._joins)
            for tmp in () if other else tmps:
                remove_scratch(tmp, job_id, uid)
            if head == self.node:  # the head's address is of no use any more
                try:
                    self.store.r.delete(head_key(self.store, job_id, attempt))
                except Exception:  # noqa: BLE001 - it expires in a day anyway
                    pass
            log.info("attempt %s/%s: its Ray on %s ended (%d processes), its folder removed", job_id, attempt,
                     self.node, n)
            self._discard(job_id, attempt)

    def _discard(self, job_id: str, attempt: int) -> None:
        with self._lock:
            self._joins.discard((job_id, attempt))
            self._ended.notify_all()

    def wait_ended(self, timeout: float) -> bool:
        """Once the worker stops: wait up to ``timeout`` for every join here to have ended its
        processes (its cgroup killed) and removed its folder. Whether they all did."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._joins:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._ended.wait(left)
        return True

    def _cgroup(self, job_id: str, attempt: int, head: str) -> Optional[Path]:
        """A new cgroup for this node's part of the attempt (None: no cgroups here, or it could
        not be made: the mark alone ends its processes, which the job's owner is told)."""
        if self.cgroups is None:
            return None
        try:
            return self.cgroups.create(job_id, attempt, "join")
        except OSError as e:
            log.warning("attempt %s/%s: cannot make the cgroup of its Ray on this node (%s); its processes are ended "
                        "by their mark alone", job_id, attempt, e)
            self._tell_no_cgroup(job_id, attempt, head, f"the worker cannot make one: {e.strerror or e}")
            return None

    def _tell_no_cgroup(self, job_id: str, attempt: int, head: str, why: str) -> None:
        """Tell the job's owner, in its events (``gpuqueue logs``, the cell), that this node's part
        of the attempt runs in no cgroup (``why``: the words of the error, never a path of the
        node's), as the attempt's warnings of a node say what is left on it."""
        message = (f"on node {self.node} the job's processes are held in no cgroup ({why}): when the attempt ends "
                   f"there, only those that still carry its mark ({MARK} in their environment) are ended, so a "
                   f"process the job detached from it with another environment (a daemon) may run on there")
        failed = self.store.warn_job(job_id, self.node, message, (self.store.k("fence", job_id), f"{attempt}:{head}"))
        if failed:
            log.warning("attempt %s/%s: cannot tell the job that its processes here are in no cgroup (%s)", job_id,
                        attempt, failed)

    @staticmethod
    def _end_cgroup(job_id: str, attempt: int, cgroup: Optional[Path]) -> int:
        """Kill every process of the join's cgroup at once and remove it; how many it held."""
        if cgroup is None:
            return 0
        try:
            held, left = end_cgroup(cgroup)
        except OSError as e:
            log.warning("attempt %s/%s: cannot end the cgroup %s of its Ray on this node (%s)", job_id, attempt,
                        cgroup, e)
            return 0
        if left:
            log.warning("attempt %s/%s: %d processes of its Ray on this node still run after its cgroup %s was "
                        "killed (stuck in the kernel, e.g. in the GPU driver); the cgroup is kept", job_id, attempt,
                        left, cgroup)
        return held

    # -- the first node -------------------------------------------------------------------
    def head(self, job_id: str, attempt: int, ident: Optional[Identity],
             within: Optional[str] = None) -> tuple[dict[str, str], dict[str, str]]:
        """Prepare the head of the attempt's own Ray on this (its first) node: the launcher's
        environment additions, and ``{path inside: path on the node}`` of its folder where that
        is made ``within`` the identity's own temporary folder (the runner's ``private_tmp``
        links, where it cannot enter the namespaces), else ``{}``. The head's address is
        published for the other nodes."""
        folder, inside = self._private(job_id, attempt, ident, within)
        address = f"{node_ip(self.store)}:{_free_port()}"
        try:
            self.store.exec([["SET", head_key(self.store, job_id, attempt), address, "EX", "86400"]],
                            guards=[(self.store.k("fence", job_id), f"{attempt}:{self.node}")])
        except BaseException:
            remove_tree(folder)
            self._forget(folder)
            raise
        threading.Thread(target=self._watch, args=(job_id, attempt, self.node, folder, inside,
                                                   ident.uid if ident else os.geteuid()),
                         name=f"rayhead-{job_id}-{attempt}", daemon=True).start()
        env = {"GPUQUEUE_RAY_HEAD": address, MARK: str(inside), **RAY_ENV,
               "RAY_AUTH_TOKEN_PATH": str(inside / "token"), NODE_ENV: json.dumps(self.node_env(ident)),
               "GPUQUEUE_RAY_JOIN_WAIT_S": f"{JOIN_WAIT_S:g}"}  # the launcher waits as long as the joins
        return env, ({str(inside): str(folder)} if inside != folder else {})

    # -- the other nodes ------------------------------------------------------------------
    def join(self, msg: dict[str, Any]) -> str:
        """A ``ray_join`` message: join the attempt's Ray (in a thread of its own)."""
        if shared_ray():
            return "shared Ray"
        job_id, attempt = msg["job_id"], int(msg["attempt"])
        with self._lock:
            if (job_id, attempt) in self._joins:
                return "already joined"
            self._joins.add((job_id, attempt))
        threading.Thread(target=self._join, args=(msg,), name=f"rayjoin-{job_id}-{attempt}", daemon=True).start()
        return "joining"

    def _join(self, msg: dict[str, Any]) -> None:
        job_id, attempt, head = msg["job_id"], int(msg["attempt"]), msg["head"]
        folder: Optional[Path] = None
        inside: Optional[Path] = None
        cgroup: Optional[Path] = None
        uid = os.geteuid()
        try:
            if not self._fence_holds(job_id, attempt, head):
                log.info("attempt %s/%s: not joining its Ray: the attempt is over", job_id, attempt)
                self._discard(job_id, attempt)
                return
            ident = self.identity(job_id)
            uid = ident.uid if ident else uid
            own = self.own_tmp(ident) if self.own_tmp is not None and ident is not None else None
            here = self.node_env(ident)
            folder, inside = self._private(job_id, attempt, ident, own[0] if own else None)
            cgroup = self._cgroup(job_id, attempt, head)  # every process of the join is born in it
            deadline = time.monotonic() + JOIN_WAIT_S
            address = self._wait_head(job_id, attempt, head, deadline)
            if address is None:
                raise RuntimeError(f"the Ray head on {head} did not come up in {JOIN_WAIT_S:g} s")
            start = functools.partial(self._start, address, folder, inside, ident, msg, own, cgroup, here)
            proc = start()
            # the head may not have been up (its port open, Ray not yet ready): start again, within the wait
            while proc.poll() is not None or not self._wait_exit(proc, 3.0):
                if time.monotonic() > deadline or not self._fence_holds(job_id, attempt, head):
                    raise RuntimeError(f"ray start --address {address} exited with code {proc.returncode}: "
                                       f"{log_tail(folder, 'ray.log', uid)}")
                time.sleep(1)
                proc = start()
            log.info("attempt %s/%s: this node joined its Ray at %s as uid %d (pid %d)", job_id, attempt, address,
                     uid, proc.pid)
        except Exception as e:  # noqa: BLE001 - the launcher says the node did not join; why is here
            log.warning("attempt %s/%s: this node cannot join the job's Ray: %s", job_id, attempt, e)
            self._end_cgroup(job_id, attempt, cgroup)
            if folder is not None:
                end_ray(folder, uid, None, inside)
                self._forget(folder)
            self._discard(job_id, attempt)
            return
        assert inside is not None
        # the ranks' scratch folders are in their TMPDIR here, else in the job's /tmp: its own here, or
        # the node's (no namespace)
        tmps = tuple(dict.fromkeys(Path(p) for p in (here.get("TMPDIR"), own[0] if own else None, "/tmp") if p))
        self._watch(job_id, attempt, head, folder, inside, uid, proc, cgroup, tmps, restart=(start, deadline + JOIN_WAIT_S, address))

    def _wait_head(self, job_id: str, attempt: int, head: str, deadline: float) -> Optional[str]:
        """The head's address once it is published and its port answers; None: not in time, or
        the attempt is over."""
        while time.monotonic() < deadline and not self.stop.is_set():
            v = self.store.r.get(head_key(self.store, job_id, attempt))
            if v:
                address = v if isinstance(v, str) else bytes(v).decode()
                if _answers(address):
                    return address
            if not self._fence_holds(job_id, attempt, head):
                return None
            time.sleep(0.3)
        return None

    @staticmethod
    def _wait_exit(proc: subprocess.Popen[bytes], seconds: float) -> bool:
        """Whether ``proc`` still runs after ``seconds``."""
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return True
        return False

    def _start(self, address: str, folder: Path, inside: Path, ident: Optional[Identity], msg: dict[str, Any],
               own: Optional[tuple[str, int]] = None, cgroup: Optional[Path] = None,
               here: Optional[dict[str, str]] = None) -> subprocess.Popen[bytes]:
        """``ray start --address`` of this node, as the owner, its output in the folder's
        ``ray.log``; ``own`` (the identity's temporary folder, its /dev/shm's bound): in the job's
        own namespaces (``privtmp.exec_as``), where ``folder`` is ``inside``. ``cgroup``: the
        join's, which the child enters as the worker's user, before it becomes the owner and
        before it execs, so that every process it starts is born there. ``here``: the identity's
        :data:`NODE_ENV` on this node: the job's ranks here take from it what the job got on its
        first node, and make their scratch folders in its ``TMPDIR`` (``gpuqueue.job.raynodes``)."""
        here = here or {}
        spec = msg.get("spec") or {}
        user_env = spec.get("env") or {}
        python = spec.get("python") or sys.executable
        path = os.pathsep.join(p for p in (package_root(), user_env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))) if p)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": path, "HOME": str(inside),
               "USER": (ident.account or ident.user) if ident else os.environ.get("USER", ""),
               "LANG": os.environ.get("LANG", "C.UTF-8"), **RAY_ENV,
               "RAY_AUTH_TOKEN_PATH": str(inside / "token"), MARK: str(inside), NODE_ENV: json.dumps(here)}
        argv = [python, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats", "--address", address,
                "--node-ip-address", node_ip(self.store), "--num-gpus", str(len(msg.get("devices") or [])),
                "--resources", json.dumps({node_resource(self.node): 1}), *agent_port_args(),
                "--temp-dir", str(inside / "ray")]
        become: Optional[tuple[int, int]] = None  # the owner's (uid, gid), taken in the child
        if ident is not None and own is not None:  # it enters the namespaces as root, then becomes the owner
            argv = [sys.executable, "-I", "-c", privtmp.EXEC_AS % package_root(), own[0], str(own[1]), str(ident.uid),
                    str(ident.gid), str(os.getpid()), str(inside), str(folder), "--", *argv]
        elif ident is not None:
            become = (ident.uid, ident.gid)
        # the child changes into the folder only once it is the owner (exec_as: in its namespaces):
        # the folder is in one the owner controls, so root's chdir could follow a link planted there
        cwd = None if own is not None and ident is not None else str(folder)
        out = open_log(folder, "ray.log", ident)
        try:
            return subprocess.Popen(argv, env=env, cwd="/", umask=0o077, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=lambda: _child(cgroup, become, cwd))
        finally:
            os.close(out)


def _answers(address: str) -> bool:
    """Whether something listens at ``address`` (host:port): the job's Ray head's GCS."""
    ip, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((ip, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


def _child(cgroup: Optional[Path], become: Optional[tuple[int, int]], cwd: Optional[str]) -> None:
    """In the child of :meth:`RayNodes._start`, before it execs: enter ``cgroup`` (still as the
    worker's user: the owner may not write it), become ``become`` (uid, gid; no supplementary
    groups) where given, change into ``cwd`` (as the owner: a link the owner's job put in its
    place leads only where the owner may go), then ask to die with the worker's thread (after
    the change of uid, which clears that request). Popen's own ``user=`` would change the uid
    before this runs."""
    if cgroup is not None:
        try:
            enter_cgroup(str(cgroup))
        except OSError as e:  # its processes are ended by their mark alone
            os.write(2, f"gpuqueue: cannot enter the cgroup {cgroup}: {e}\n".encode())
    if become is not None:
        os.setgroups([])
        os.setresgid(become[1], become[1], become[1])
        os.setresuid(become[0], become[0], become[0])
    if cwd is not None:
        os.chdir(cwd)
    die_with_parent(signal.SIGKILL)


def end_ray(folder: Path, uid: int, proc: Optional[subprocess.Popen[bytes]], inside: Optional[Path] = None,
            remove: bool = True) -> int:
    """Kill the Ray processes of ``folder`` (uid ``uid``, its mark in their environment: the
    folder's path ``inside`` the job's namespaces, by default ``folder``), then, unless not to
    ``remove`` it (a join's Ray started again there), remove the folder (and ``inside``, where it
    is a link to it: ``privtmp.link_instead``). Returns how many processes were killed."""
    victims: list[psutil.Process] = []
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    mark = f"{MARK}={inside or folder}".encode()
    for _ in range(3):  # what was forked meanwhile, too
        found = 0
        for p in psutil.process_iter(["uids"]):
            try:
                if p.info["uids"] is None or p.info["uids"].real != uid or p.pid == os.getpid():
                    continue
                with open(f"/proc/{p.pid}/environ", "rb") as f:
                    if mark not in f.read().split(b"\0"):
                        continue
                p.kill()
                victims.append(p)
                found += 1
            except (psutil.Error, OSError):
                continue
        if not found:
            break
    psutil.wait_procs(victims, timeout=5)
    if proc is not None:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if not remove:
        return len(victims)
    for _ in range(10):  # a Ray process killed a moment ago may still have written there
        remove_tree(folder)  # never through a link the job put there (a FIFO: root would wait for good)
        if not os.path.lexists(folder):
            break
        time.sleep(0.2)
    if inside is not None and inside != folder:
        try:
            if os.path.islink(inside) and os.readlink(inside) == str(folder):
                os.unlink(inside)
        except OSError:
            pass
    return len(victims)


__all__ = ["RAY_ENV", "RayNodes", "attempt_token", "cluster_secret", "end_ray", "shared_ray"]
