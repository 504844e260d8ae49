"""The guard of an embedded runner: what a killed runner's job leaves is ended before the
attempt is settled (Linux).

The runner is the subreaper of its job's processes and kills what is left when the job ends
(``gpuqueue.attempt.orphans``), but a runner that is itself killed (the out-of-memory killer,
``kill -9``, a crash) cannot: its job's processes, those in sessions of their own included, were
re-parented to init and ran on, on the GPUs the queue gave to the next attempt. In a cluster the
worker's runner fork server catches them (``gpuqueue.cluster.forkserver``); the Jupyter server
that runs the embedded queue must not be a subreaper (it starts kernels, terminals, whatever its
user runs), so each embedded runner runs under a guard instead.

``python -m gpuqueue.attempt.runner --guard ...`` forks at once: the parent is the guard (the
process the queue started, whose pid the attempt records and the queue watches, also after a
restart), the child goes on as the runner. The guard is a subreaper; it forwards the queue's
SIGUSR1 and SIGTERM to the runner and waits for it. Once the runner has ended, it kills what is
left below it, each orphan with all its descendants at once, again until nothing is left
(``orphans.kill_strays``, at most ``STRAY_WAIT_S``), and if the runner wrote no ``exit.json``,
it writes one that says what happened (``gpuqueue.attempt.lost``). Only then does it exit, with
the runner's code: the queue settles an attempt whose runner left no exit record when the guard
has ended, so attempt 2 never starts beside attempt 1's processes. The cost on the launch path:
none (the fork happens when the runner is started, ahead of the launch).

The runner learns the attempt folder (from its stdin, when warm) and hands it to the guard over a
pipe. If the guard itself is killed, the runner gets ``GUARD_GONE_SIGNAL``
(``PR_SET_PDEATHSIG``), kills its job at once (it is the subreaper of the job's processes) and
records the attempt as lost.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from . import orphans
from .orphans import STRAY_WAIT_S
from .lost import runner_lost_record

STRAY_POLL_S = 0.02
GUARD_GONE_SIGNAL = signal.SIGUSR2  # what the runner gets when its guard ends before it
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def _prctl(option: int, arg: Any) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _name(comm: bytes) -> None:
    """The process's name in ``ps -o comm``, ``top`` and the out-of-memory killer's log."""
    _prctl(PR_SET_NAME, ctypes.c_char_p(comm))


def guarded(run_runner: Callable[[Optional[int]], int]) -> int:
    """Fork: the child runs ``run_runner(fd)`` (fd: where it writes the attempt folder, once known,
    then closes it) and exits with its result; this process becomes the guard and returns the
    runner's exit code once it and every process left below it have ended."""
    orphans.become_subreaper()
    report_r, report_w = os.pipe()
    guard = os.getpid()
    pid = os.fork()
    if pid == 0:  # the runner
        code = 1
        try:
            os.close(report_r)
            _prctl(PR_SET_PDEATHSIG, int(GUARD_GONE_SIGNAL))
            if os.getppid() != guard:  # the guard died before the line above
                os._exit(1)
            _name(b"gpuqueue-runner")
            code = run_runner(report_w)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - said on stderr, like an uncaught error
            import traceback

            traceback.print_exc()
        finally:
            for f in (sys.stdout, sys.stderr):
                try:
                    f.flush()
                except (OSError, ValueError):
                    pass
        os._exit(code)
    os.close(report_w)
    _name(b"gpuqueue-guard")
    devnull = os.open(os.devnull, os.O_RDONLY)  # stdin is the runner's: the queue's EOF must reach it alone
    os.dup2(devnull, 0)
    os.close(devnull)
    return _watch(pid, report_r)


def _watch(runner: int, report_r: int) -> int:
    def forward(sig: int, _frame: Any) -> None:
        try:
            os.kill(runner, sig)  # our own unreaped child: its pid cannot be another's
        except ProcessLookupError:
            pass

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, forward)
    with os.fdopen(report_r, "rb") as f:
        said = f.read(65536)  # until the runner closes it: once it knows its attempt, or at its end
    _, status = os.waitpid(runner, 0)
    code = os.waitstatus_to_exitcode(status)
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    ended, left = end_strays()
    folder = said.decode(errors="replace").strip()
    if folder:
        _record(Path(folder), code, ended, left)
    return code if code >= 0 else 128 - code


def end_strays(timeout_s: float = STRAY_WAIT_S) -> tuple[int, int]:
    """Kill every process left below this one, each with all its descendants at once, until none
    runs or ``timeout_s`` passed; (how many it killed, how many still ran)."""
    hit: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        signalled, running = orphans.kill_strays(set())
        hit |= signalled
        if not running:
            break
        if time.monotonic() >= deadline:
            return len(hit), running
        time.sleep(STRAY_POLL_S)
    while True:  # reap the last ones
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    return len(hit), 0


def _record(folder: Path, code: int, ended: int, left: int) -> None:
    """The attempt's ``exit.json``, if the runner left none: it was lost, and what the guard did."""
    if (folder / "exit.json").exists():
        return
    try:
        launch = json.loads((folder / "launch.json").read_text())
        node = str((launch.get("env") or {}).get("GPUQUEUE_NODE") or "local")
    except (OSError, ValueError, AttributeError):
        node = "local"
    rec = runner_lost_record(node, code, ended, left, STRAY_WAIT_S, "the runner's guard")
    rec.update(stop_reason=None, ended=time.time())
    tmp = folder / "exit.json.guard.tmp"
    try:
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, folder / "exit.json")
    except OSError as e:
        print(f"gpuqueue guard: cannot write {folder / 'exit.json'}: {e}", file=sys.stderr)
