"""A fork server for runners: one small process per worker that has loaded
``gpuqueue.runner`` once and forks a runner per attempt.

Starting a runner as a fresh interpreter costs ~35 ms of CPU (the interpreter, then the
imports); forking this already-loaded, single-threaded process costs about one millisecond.
Each forked runner is exactly ``python -m gpuqueue.runner ATTEMPT_DIR`` in all but timing: a
session of its own, stderr to the attempt's ``runner.log``, and it dies with the fork server
(``PR_SET_PDEATHSIG``), which dies with the worker's launch thread, so a killed worker still
leaves no job running.

Protocol (lines of text): the worker writes an attempt folder to the server's stdin; the server
answers ``pid <PID>`` on stdout once it has forked, and ``exit <PID> <CODE>`` when that runner
ends (the server reaps its children). EOF on stdin: the server exits.
"""

from __future__ import annotations

import ctypes
import gc
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def _pdeathsig(sig: int = signal.SIGTERM) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


# -- the server process -----------------------------------------------------------------------
def serve() -> int:
    """The fork server's loop (runs in its own process)."""
    from ..runner import Runner  # loaded once, shared copy-on-write by every runner

    gc.freeze()  # what is loaded stays out of the children's collections (fewer copied pages)
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    inp = sys.stdin.fileno()
    out = sys.stdout.fileno()
    buf = b""

    def say(line: str) -> None:
        os.write(out, line.encode() + b"\n")

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            say(f"exit {pid} {os.waitstatus_to_exitcode(status)}")

    while True:
        try:
            ready, _, _ = select.select([inp, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        reap()
        if inp not in ready:
            continue
        chunk = os.read(inp, 65536)
        if not chunk:
            return 0  # the worker is gone or done: our runners get SIGTERM as we exit
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            adir = line.decode().strip()
            if not adir:
                continue
            pid = os.fork()
            if pid == 0:  # the runner
                code = 1
                try:
                    os.setsid()
                    _pdeathsig()
                    if os.getppid() != me:  # the server died before prctl took hold
                        os._exit(1)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake_r, wake_w):
                        os.close(fd)
                    null = os.open(os.devnull, os.O_RDWR)
                    os.dup2(null, 0)
                    os.dup2(null, 1)
                    log = os.open(os.path.join(adir, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                    os.dup2(log, 2)
                    os.close(null)
                    os.close(log)
                    code = Runner(Path(adir)).run()
                except BaseException:  # noqa: BLE001 - report it in runner.log, never return to the loop
                    try:
                        traceback.print_exc()
                        sys.stderr.flush()
                    except BaseException:  # noqa: BLE001
                        pass
                finally:
                    os._exit(code & 0xFF if code >= 0 else 1)
            say(f"pid {pid}")


# -- the worker's side ------------------------------------------------------------------------
class RunnerHandle:
    """A forked runner as the worker sees it: ``pid``, ``poll()``, ``returncode`` (the parts of
    ``subprocess.Popen`` the worker uses)."""

    def __init__(self, pid: int, server: "ForkServer"):
        self.pid = pid
        self.returncode: Optional[int] = None
        self._server = server

    def poll(self) -> Optional[int]:
        """The runner's exit code once it has ended, else None."""
        if self.returncode is None and self._server.gone:
            # the server died (and took its runners with it): ask the kernel
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = -signal.SIGTERM
            except PermissionError:
                pass
        return self.returncode


class ForkServer:
    """The worker's handle on its fork server. ``launch`` is called from one thread (the
    worker's launch thread, which must also be the one that created the server: the server's
    ``PR_SET_PDEATHSIG`` fires when that thread ends)."""

    def __init__(self, env: dict[str, str], on_exit: Optional[Callable[[], None]] = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from gpuqueue.cluster.forkserver import serve; sys.exit(serve())"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, start_new_session=True,
            close_fds=True, env=env, preexec_fn=_pdeathsig,
        )
        self.gone = False
        self._on_exit = on_exit
        self._launch_lock = threading.Lock()
        self._handles: dict[int, RunnerHandle] = {}
        self._early: dict[int, int] = {}  # exits reported before their pid line was read
        self._pids: list[int] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, name="forkserver-reader", daemon=True).start()

    def alive(self) -> bool:
        """Whether the server can take launches."""
        return not self.gone and self.proc.poll() is None

    def launch(self, attempt_dir: Path, timeout: float = 30.0) -> RunnerHandle:
        """Fork a runner for ``attempt_dir``; returns once it exists. Thread-safe."""
        with self._launch_lock:  # one launch at a time: answers come in order
            return self._launch(attempt_dir, timeout)

    def _launch(self, attempt_dir: Path, timeout: float) -> RunnerHandle:
        assert self.proc.stdin is not None
        self.proc.stdin.write(str(attempt_dir).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._pids:
                left = deadline - time.monotonic()
                if self.gone or left <= 0:
                    raise RuntimeError("the runner fork server did not answer")
                self._cond.wait(left)
            pid = self._pids.pop(0)
            h = RunnerHandle(pid, self)
            if pid in self._early:
                h.returncode = self._early.pop(pid)
            self._handles[pid] = h
            return h

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode(errors="replace").split()
            with self._cond:
                if len(parts) == 2 and parts[0] == "pid":
                    self._pids.append(int(parts[1]))
                    self._cond.notify_all()
                elif len(parts) == 3 and parts[0] == "exit":
                    pid, code = int(parts[1]), int(parts[2])
                    h = self._handles.pop(pid, None)
                    if h is not None:
                        h.returncode = code
                    else:
                        self._early[pid] = code
            if parts and parts[0] == "exit" and self._on_exit is not None:
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
