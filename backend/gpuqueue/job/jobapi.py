"""The job-side API: what code inside a job calls to report and to learn it should stop.

    import gpuqueue
    for step in range(start, steps):
        loss = train_step()
        gpuqueue.log(step=step, loss=loss)          # batched, never blocks the step
        gpuqueue.progress(step + 1, steps)
        if gpuqueue.should_stop():                 # preempt / cancel / time-limit notice
            ...save a checkpoint and leave...

Outside a job every call is a cheap no-op (``should_stop()`` is False), so the same code runs
in a notebook. Works in cell jobs, command jobs, every rank of a ``torchrun`` job (only rank 0
reports) and Ray Train workers.

Events travel through the runner's pipe (``GPUQUEUE_EVENT_FD``). A process that cannot reach
the pipe (a rank started by torchrun, which closes inherited descriptors; a Ray worker) appends
whole lines to ``events.jsonl`` in ``GPUQUEUE_ATTEMPT_DIR`` instead, in append mode, so lines
never interleave: the runner's own file where the job runs as the launching user, else the job's
own file, which the runner copies (job-side record types only, see ``gpuqueue.attempt.runner``).
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Optional

from . import channel

FLUSH_INTERVAL_S = 0.25  # metrics are sent at most this often (and at exit)
MAX_BATCH = 2000  # a batch larger than this is sent at once
CONTROL_POLL_S = 0.1  # how often should_stop() looks at control.json


def rank() -> int:
    """This process's global rank in a distributed job (0 when not distributed)."""
    for var in ("RANK", "GPUQUEUE_RANK"):
        v = os.environ.get(var)
        if v and v.lstrip("-").isdigit():
            return int(v)
    return 0


def world_size() -> int:
    """Number of processes of the job (1 when not distributed)."""
    v = os.environ.get("WORLD_SIZE", "1")
    return int(v) if v.isdigit() else 1


def is_main_process() -> bool:
    """True in the process that reports and saves (rank 0)."""
    return rank() == 0


def in_job() -> bool:
    """True inside a gpuqueue job (any rank)."""
    return "GPUQUEUE_JOB_ID" in os.environ


# -- sending events --------------------------------------------------------------------------
_file_lock = threading.Lock()
_pipe_ok: Optional[bool] = None


def _pipe_usable() -> bool:
    """Whether ``GPUQUEUE_EVENT_FD`` really is our pipe in this process (not a reused number)."""
    global _pipe_ok
    if _pipe_ok is None:
        fd = os.environ.get("GPUQUEUE_EVENT_FD")
        ok = False
        if fd and fd.isdigit():
            try:
                import stat

                ok = stat.S_ISFIFO(os.fstat(int(fd)).st_mode)
            except OSError:
                ok = False
        _pipe_ok = ok
    return _pipe_ok


def emit(type_: str, data: dict[str, Any]) -> bool:
    """Send one event to the job's stream, from any process of the job; False outside a job."""
    if _pipe_usable():
        return channel.emit(type_, data)
    adir = os.environ.get("GPUQUEUE_ATTEMPT_DIR")
    if not adir or not in_job():
        return False
    line = (json.dumps({"t": time.time(), "type": type_, "data": data}, default=str) + "\n").encode()
    with _file_lock:
        try:
            fd = os.open(os.path.join(adir, "events.jsonl"), os.O_WRONLY | os.O_APPEND)
        except OSError:
            return False
        try:
            os.write(fd, line)  # one write of a whole line: appends never interleave
        finally:
            os.close(fd)
    return True


# -- metrics ---------------------------------------------------------------------------------
class _MetricsBatcher:
    """Collects ``log()`` calls and sends them from a background thread.

    ``add`` is a deque append (atomic under the GIL, no lock, no I/O); the thread wakes every
    ``FLUSH_INTERVAL_S`` and writes what piled up."""

    def __init__(self) -> None:
        self._buf: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0  # the process whose flusher thread runs (a fork needs its own)

    def add(self, rec: dict[str, Any]) -> None:
        if self._pid != os.getpid():
            self._start()
        self._buf.append(rec)
        if len(self._buf) >= MAX_BATCH:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._buf = collections.deque()
            threading.Thread(target=self._loop, name="gpuqueue-metrics", daemon=True).start()
            channel.on_exit(self.flush)
            import atexit

            atexit.register(self.flush)

    def _loop(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Send everything collected so far, in order."""
        with self._lock:
            buf = self._buf
            while buf:
                emit("metrics", buf.popleft())


_metrics = _MetricsBatcher()


def _clean(value: Any) -> Any:
    """A JSON-friendly scalar: tensors and numpy numbers become floats; NaN/inf become None."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        f = float(value)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return str(value)


def log(step: Optional[int] = None, **metrics: Any) -> None:
    """Record metrics (``loss=0.31, lr=3e-4``) at ``step``; batched, returns at once.

    Tensors are converted with ``.item()`` here, in the caller's thread: pass ``loss.detach()``
    rather than keeping a graph alive. Only rank 0 reports in a distributed job.
    """
    if not metrics or not in_job() or not is_main_process():
        return
    rec: dict[str, Any] = {"step": int(step) if step is not None else None, "t": time.time()}
    for k, v in metrics.items():
        rec[str(k)] = _clean(v)
    _metrics.add(rec)


def flush() -> None:
    """Send batched metrics now (they are also sent every 0.25 s and when the job exits)."""
    _metrics.flush()


_last_progress = [0.0]  # when progress was last sent (time.monotonic)


def progress(done: float, total: Optional[float] = None) -> None:
    """Report progress (``done`` of ``total`` steps); sent at most 4 times a second, and always
    for the last step."""
    if not in_job() or not is_main_process():
        return
    now = time.monotonic()
    final = total is not None and done >= total
    if not final and now - _last_progress[0] < FLUSH_INTERVAL_S:
        return
    _last_progress[0] = now
    emit("progress", {"done": _clean(done), "total": _clean(total)})


def info(message: str) -> None:
    """Show a line in the job's event stream as an ``info`` event (rank 0 only)."""
    if is_main_process():
        emit("info", {"message": message})


# -- stop notices ----------------------------------------------------------------------------
_control_seen = False
_control_checked = 0.0


def _install_handler() -> None:
    """In a command job, turn SIGTERM into the stop flag (cell jobs have it from jobmain)."""
    if threading.current_thread() is not threading.main_thread() or not in_job():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return
    if current in (signal.SIG_DFL, None):
        channel.install_stop_handler()


def watch_stop() -> None:
    """Say this process checks ``should_stop()``: a notice sets a flag instead of killing it."""
    channel.mark_stop_aware()
    _install_handler()


def _control_says_stop() -> bool:
    """True once the runner's stop request (control.json) exists: the path for processes the
    SIGTERM does not reach (Ray workers) or did not reach yet."""
    global _control_seen, _control_checked
    if _control_seen:
        return True
    now = time.monotonic()
    if now - _control_checked < CONTROL_POLL_S:
        return False
    _control_checked = now
    adir = os.environ.get("GPUQUEUE_ATTEMPT_DIR")
    if adir and os.path.exists(os.path.join(adir, "control.json")):
        _control_seen = True
    return _control_seen


def stop_notice() -> bool:
    """This process's own view: a stop notice arrived (no agreement between ranks)."""
    watch_stop()
    return channel.stop_requested() or _control_says_stop()


def should_stop() -> bool:
    """True once the job was asked to stop (preemption, cancel or time limit): save and leave.

    Calling it marks the job as stop-aware, so the notice sets this flag rather than raising
    ``JobStopped``. In a ``torch.distributed`` job every rank must call it at the same points
    (it is a collective): all ranks then agree and stop at the same step.
    """
    local = stop_notice()
    dist = sys.modules.get("torch.distributed")
    if dist is not None and world_size() > 1:
        try:
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                import torch

                flag = torch.tensor([1 if local else 0], dtype=torch.int32)
                if dist.get_backend() == "nccl":
                    flag = flag.cuda()
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                return bool(flag.item())
        except RuntimeError:
            return local
    return local
