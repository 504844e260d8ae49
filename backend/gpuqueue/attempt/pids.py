"""Whether a pid is still the process it was: not ended, not a zombie, not reused.

``os.kill(pid, 0)`` says yes to a zombie (a process that has ended but that nobody reaped: in a
container whose PID 1 does not reap, every orphan that ends stays one) and to a stranger that
took an ended process's pid. Both look like a job still running.
"""

from __future__ import annotations

from typing import Optional

import psutil

SAME_START_S = 1.0  # start times compared within this (psutil's come from clock ticks since boot)


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or None if it is gone or a zombie."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p.create_time()
    except (psutil.Error, OSError):  # NoSuchProcess, AccessDenied
        return None


def still_runs(pid: int, started: Optional[float]) -> bool:
    """Whether ``pid`` runs and is the process that started at ``started`` (None: not known,
    any process that runs under that pid counts)."""
    now = process_start_time(pid)
    return now is not None and (started is None or abs(now - started) < SAME_START_S)
