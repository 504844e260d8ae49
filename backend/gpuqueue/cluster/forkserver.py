"""A fork server for runners: one small process per worker that has loaded
``gpuqueue.attempt.runner`` once and keeps a few runners forked ahead of time.

Starting a runner as a fresh interpreter costs ~35 ms of CPU (the interpreter, then the
imports); forking this already-loaded, single-threaded process costs about one millisecond, and
doing it *before* the launch takes the fork (and the new process's first scheduling, which the
kernel delays for a new task) off the path from a free GPU to the job's start.

Each runner is exactly ``python -m gpuqueue.attempt.runner ATTEMPT_DIR`` in all but timing: a session of
its own, stderr to the attempt's ``runner.log``, and it dies with the fork server
(``PR_SET_PDEATHSIG``), which dies with the worker's launch thread, so a killed worker still
leaves no job running. The server starts with the allow-listed environment of
``gpuqueue.attempt.launch.runner_env`` (no credentials) and is not dumpable, nor are its runners.

How they talk:

* the worker sends an attempt folder as one datagram on a socket pair; whichever spare runner
  receives it runs that attempt (a datagram is read whole, by exactly one reader);
* that runner writes ``pid <PID> <FOLDER>`` to the status pipe (the server's stdout, which the
  worker reads) and tells the server, which forks a replacement spare;
* the server reaps its children and writes ``exit <PID> <CODE> <ENDED> <LEFT>`` to the status
  pipe (``ENDED``, ``LEFT``: see below);
* EOF on the server's stdin (the worker closed it, or died): the server exits, and its runners
  get SIGTERM.

A killed runner: the runner is the subreaper of its job's processes and kills what is left when
the job ends (``gpuqueue.attempt.orphans``), but a runner that is itself killed (the
out-of-memory killer, ``kill -9``, a crash) cannot. The server is therefore a subreaper too:
the job's processes, setsid'd and double-forked ones included, are re-parented to it, and any
child of the server that is not a runner it forked is such an orphan. It kills each, with all
its descendants, again until none is left (``orphans.kill_strays``), and says the runner's
``exit`` only then, or after ``STRAY_WAIT_S`` (a process stuck in the kernel, e.g. in a GPU
driver): ``ENDED`` is how many processes it killed meanwhile (of every runner that ended in
that time), ``LEFT`` how many still ran. So by the time the worker reports the attempt lost and
the scheduler gives its GPUs to the next job, nothing of the job runs. The job's processes run
under other uids (a dynamic uid is shared by its user's jobs on the node), so nothing is killed
by uid: only what descends from the dead runner.

A runner and its fork server that die together (the server killed first, then the runner before
it has stopped its job on the server's ``PR_SET_PDEATHSIG``) leave the job's processes to init:
where the worker can make cgroups, the runner enters its attempt's cgroup before the job starts
(the datagram carries its path after a NUL), and the worker ends that cgroup when it finds the
runner dead (``gpuqueue.attempt.cgroup``). What remains: the same without cgroups, and a job that
has another service start its processes (``at``, ``systemd-run``, ``ssh``), which are neither
descendants of the runner nor in its cgroup.
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from ..attempt.cgroup import enter as enter_cgroup
from ..attempt.orphans import STRAY_WAIT_S

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
SPARES = 2  # runners kept waiting for a launch
MAX_DIR = 3800  # a status line (with the folder) stays under PIPE_BUF, so it is written whole
STRAY_POLL_S = 0.02  # while a dead runner's processes are being killed: how often they are looked for


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


def not_dumpable() -> None:
    """Make this process's ``/proc`` entries root's and refuse ptrace by its own uid (Linux), so
    a job running under the same uid cannot read its environment or memory. Lasts until exec."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0)
    except OSError:
        pass


# -- the server process -----------------------------------------------------------------------
def serve(launch_fd: int) -> int:
    """The fork server's loop (runs in its own process). ``launch_fd``: the receiving end of
    the worker's datagram socket pair."""
    from ..attempt import orphans
    from ..attempt.runner import Runner  # loaded once, shared copy-on-write by every runner

    not_dumpable()  # and every runner forked from here
    orphans.become_subreaper()  # a killed runner's processes come to us (see the module's docstring)

    gc.freeze()  # what is loaded stays out of the children's collections (fewer copied pages)
    me = os.getpid()
    launches = socket.socket(fileno=launch_fd)
    taken_r, taken_w = os.pipe()  # a spare says "taken" here, the server forks its replacement
    wake_r, wake_w = os.pipe()
    for fd in (taken_r, wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status = sys.stdout.fileno()
    inp = sys.stdin.fileno()
    spares: set[int] = set()  # pids of the runners waiting for a launch
    runners: set[int] = set()  # pids of every runner forked here (spare or not) until reaped
    ended: list[tuple[int, int]] = []  # (pid, code) of runners reaped, said once their strays are gone
    ended_since = 0.0
    killed: set[int] = set()  # strays killed since the first of ``ended``
    strays = 0  # strays found running at the last look

    def say(line: str) -> None:
        os.write(status, line.encode() + b"\n")

    def spare() -> None:
        pid = os.fork()
        if pid:
            spares.add(pid)
            runners.add(pid)
            return
        code = 1
        try:  # a spare runner: ready before its launch arrives
            os.setsid()
            die_with_parent()
            if os.getppid() != me:  # the server died before prctl took hold
                os._exit(1)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (taken_r, wake_r, wake_w, inp):
                os.close(fd)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            adir, _, cgroup = launches.recv(2 * MAX_DIR).decode().partition("\0")
            os.write(taken_w, f"{os.getpid()}\n".encode())
            os.close(taken_w)
            launches.close()
            os.write(status, f"pid {os.getpid()} {adir}\n".encode())
            os.dup2(null, 1)
            os.close(null)
            log = os.open(os.path.join(adir, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 2)
            os.close(log)
            if cgroup:  # before the job starts: every process of it is born in the attempt's cgroup
                try:
                    enter_cgroup(cgroup)
                except OSError as e:  # the job runs as it would without one
                    print(f"gpuqueue: cannot enter the attempt's cgroup {cgroup}: {e}", file=sys.stderr, flush=True)
            code = Runner(Path(adir)).run()
        except BaseException:  # noqa: BLE001 - report it in runner.log, never return to the loop
            try:
                traceback.print_exc()
                sys.stderr.flush()
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code & 0xFF if code >= 0 else 1)

    while True:
        while len(spares) < SPARES:
            spare()
        try:
            wait = STRAY_POLL_S if ended else (1.0 if strays else None)  # strays: killed again until gone
            ready, _, _ = select.select([inp, taken_r, wake_r], [], [], wait)
        except InterruptedError:
            continue
        if taken_r in ready:
            try:
                for taken in os.read(taken_r, 4096).split():
                    spares.discard(int(taken))
            except BlockingIOError:
                pass
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        reaped = False
        while True:  # reap
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            spares.discard(pid)
            if pid in runners:  # else a stray that ended
                runners.discard(pid)
                if not ended:
                    ended_since = time.monotonic()
                ended.append((pid, os.waitstatus_to_exitcode(st)))
        if reaped or strays or ended:
            try:
                hit, strays = orphans.kill_strays(runners)
            except Exception:  # noqa: BLE001 - the server (and every runner with it) must not end over it
                traceback.print_exc()  # to the worker's log
                hit, strays = set(), 0
            killed |= hit
            if ended and (not strays or time.monotonic() - ended_since >= STRAY_WAIT_S):
                for pid, code in ended:
                    say(f"exit {pid} {code} {len(killed)} {strays}")
                ended, killed = [], set()
        if inp in ready and not os.read(inp, 4096):
            deadline = time.monotonic() + 2.0  # what dead runners left must not outlive us either
            while strays and time.monotonic() < deadline:
                time.sleep(STRAY_POLL_S)
                strays = orphans.kill_strays(runners)[1]
            return 0  # the worker is gone or done: our runners get SIGTERM as we exit


# -- the worker's side ------------------------------------------------------------------------
class RunnerHandle:
    """A forked runner as the worker sees it: ``pid``, ``poll()``, ``returncode`` (the parts of
    ``subprocess.Popen`` the worker uses), and once it has ended, what the server did about the
    processes it left: ``strays_ended`` (how many it killed; None: not known, the server is
    gone) and ``strays_left`` (how many still ran when the server said the exit)."""

    def __init__(self, pid: int, server: "ForkServer"):
        from ..attempt.pids import process_start_time  # the worker's side only: the server loads no psutil

        self.pid = pid
        self.started = process_start_time(pid)  # against a zombie or a reused pid once the server is gone
        self.returncode: Optional[int] = None
        self.strays_ended: Optional[int] = None
        self.strays_left = 0
        self._server = server

    def poll(self) -> Optional[int]:
        """The runner's exit code once it has ended, else None."""
        if self.returncode is None and self._server.gone:
            # the server died (and took its runners with it): ask the kernel. A runner that ended
            # after the server is nobody's child: where PID 1 does not reap (many containers) it
            # stays a zombie, which is not a runner that still runs.
            from ..attempt.pids import still_runs

            if not still_runs(self.pid, self.started):
                self.returncode = -signal.SIGTERM
        return self.returncode


class ForkServer:
    """The worker's handle on its fork server. It must be created by a thread that lives as
    long as the worker (the server's ``PR_SET_PDEATHSIG`` fires when that thread ends);
    ``launch`` may be called from any thread."""

    def __init__(self, env: dict[str, str], on_exit: Optional[Callable[[], None]] = None):
        self._send, recv = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        code = f"import sys; from gpuqueue.cluster.forkserver import serve; sys.exit(serve({recv.fileno()}))"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
            start_new_session=True, close_fds=True, pass_fds=(recv.fileno(),), env=env, preexec_fn=die_with_parent,
        )
        recv.close()
        self.gone = False
        self._on_exit = on_exit
        self._handles: dict[int, RunnerHandle] = {}  # runners that took a launch, until they end
        self._started: dict[str, RunnerHandle] = {}  # attempt folder -> its runner, until launch returns
        self._cond = threading.Condition()
        threading.Thread(target=self._read, name="forkserver-reader", daemon=True).start()

    def alive(self) -> bool:
        """Whether the server can take launches."""
        return not self.gone and self.proc.poll() is None

    def launch(self, attempt_dir: Path, timeout: float = 30.0, cgroup: Optional[Path] = None) -> RunnerHandle:
        """Hand ``attempt_dir`` to a waiting runner; returns once it has taken it. ``cgroup``: the
        attempt's cgroup (``gpuqueue.attempt.cgroup``), which the runner enters before the job starts."""
        key = str(attempt_dir)
        if len(key.encode()) >= MAX_DIR:
            raise RuntimeError(f"the attempt folder's path is over {MAX_DIR} bytes: use a shorter --state-dir")
        if cgroup is not None and len(str(cgroup).encode()) >= MAX_DIR:
            raise RuntimeError(f"the attempt's cgroup path is over {MAX_DIR} bytes")
        self._send.send(key.encode() + (b"\0" + str(cgroup).encode() if cgroup is not None else b""))
        deadline = time.monotonic() + timeout
        with self._cond:
            while key not in self._started:
                left = deadline - time.monotonic()
                if self.gone or left <= 0:
                    raise RuntimeError("no runner took the launch (the runner fork server is not answering)")
                self._cond.wait(left)
            return self._started.pop(key)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            what, _, rest = raw.decode(errors="replace").rstrip("\n").partition(" ")
            with self._cond:
                if what == "pid":
                    pid, _, adir = rest.partition(" ")
                    h = RunnerHandle(int(pid), self)
                    self._handles[h.pid] = h
                    self._started[adir] = h
                    self._cond.notify_all()
                elif what == "exit":
                    runner, code, strays_ended, strays_left = (int(v) for v in rest.split())
                    ended = self._handles.pop(runner, None)  # None: a spare that never ran anything
                    if ended is not None:
                        ended.strays_ended, ended.strays_left = strays_ended, strays_left
                        ended.returncode = code  # last: poll() says it ended once all is set
            if what == "exit" and self._on_exit is not None:
                self._on_exit()
        with self._cond:
            self.gone = True
            self._cond.notify_all()

    def close(self) -> None:
        """Close its stdin: the server exits (its remaining runners get SIGTERM)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        self._send.close()
