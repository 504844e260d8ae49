"""The job process's side of the runner's event pipe, and its stop notice.

Inside a job, ``GPUQUEUE_EVENT_FD`` names a pipe to the runner; each JSON line written there
becomes an event in the job's stream. Outside a job, ``emit`` does nothing and returns False.
A stop notice (cancel, preemption, time limit) arrives as SIGTERM; ``install_stop_handler``
turns it into a flag that ``stop_requested`` reads, or into a ``JobStopped`` exception for code
that never asks. In a multi-rank job the SIGTERM may instead come from torchrun, because another
rank failed: the exception then says so (``stop_message``).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import threading
import time
from typing import Any, Optional

# The records a job may send (gpuqueue.job.jobapi, checkpoints, the cell's result); the runner drops
# any other type, so a job cannot write the runner's "exit", "runner", "state" or "log" records.
JOB_EVENT_TYPES = frozenset({"metrics", "progress", "info", "checkpoint", "result"})

_lock = threading.Lock()
_stream: Optional[Any] = None
_stop = threading.Event()
_stop_aware = False


class JobStopped(BaseException):
    """Raised in a job that does not watch ``should_stop()`` when it is asked to stop."""


def stop_message() -> str:
    """Why a stop notice came: the queue asked (cancel, preemption, time limit), or, in a
    multi-rank job, torchrun stopped this rank because another one failed."""
    from .distributed import peer_failure, stopped_by_peer_message

    peer = peer_failure()
    if peer is not None:
        return stopped_by_peer_message(peer)
    return "the job was asked to stop (cancel, preemption or time limit)"


def in_job() -> bool:
    """True inside a job process started by gpuqueue."""
    return "GPUQUEUE_EVENT_FD" in os.environ


def _get_stream() -> Optional[Any]:
    global _stream
    if _stream is None:
        fd = os.environ.get("GPUQUEUE_EVENT_FD")
        if fd is None:
            return None
        try:
            _stream = os.fdopen(int(fd), "w", buffering=1, closefd=False)
        except OSError:
            return None
    return _stream


def emit(type_: str, data: dict[str, Any]) -> bool:
    """Send one event to the job's stream; False when not in a job (or the pipe is gone)."""
    stream = _get_stream()
    if stream is None:
        return False
    line = json.dumps({"type": type_, "t": time.time(), "data": data}, default=str)
    with _lock:
        try:
            stream.write(line + "\n")
        except (OSError, ValueError):
            return False
    return True


_exit_hooks: list[Any] = []


def on_exit(fn: Any) -> None:
    """Run ``fn()`` before the job process ends (e.g. flush batched metrics)."""
    _exit_hooks.append(fn)


def run_exit_hooks() -> None:
    """Call the registered exit hooks; errors are printed, not raised."""
    for fn in _exit_hooks:
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            print(f"gpuqueue: exit hook failed: {e}", file=__import__("sys").stderr)


def mark_stop_aware() -> None:
    """Say this job watches ``stop_requested()``: a stop notice sets a flag, not an exception."""
    global _stop_aware
    _stop_aware = True


def stop_requested() -> bool:
    """True once a stop notice has arrived."""
    return _stop.is_set()


def install_stop_handler() -> None:
    """Route SIGTERM to the stop flag (main thread only), then unblock SIGTERM: a rank's
    wrapper starts a cell's process with it blocked (``distributed.run_rank``), so a stop that
    came while Python was still starting is delivered now, to this handler, instead of ending
    the process without a word. Raises ``JobStopped`` at once for such a stop."""

    def handler(signum: int, frame: Any) -> None:
        first = not _stop.is_set()
        _stop.set()
        if first and not _stop_aware:
            raise JobStopped(stop_message())

    importlib.import_module(f"{__package__}.distributed")  # loaded now, not in the handler (stop_message)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
