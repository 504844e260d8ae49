"""What a lost attempt says: its runner ended without an exit record (killed by the
out-of-memory killer or an admin, or crashed), what happened to the job's processes it left,
and what comes next. One wording for both modes: a cluster worker's runner fork server
(``gpuqueue.cluster.worker_tail.runner_lost``) and an embedded runner's guard
(``gpuqueue.attempt.guard``) end those processes and say so with :func:`runner_lost_record`."""

from __future__ import annotations

import signal
from typing import Any, Optional

CRASH_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)


def _how(code: Optional[int]) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return (f"crashed ({name})" if -code in CRASH_SIGNALS else f"was killed by {name}"
                + (" (the out-of-memory killer, or an admin's kill -9)" if -code == signal.SIGKILL else ""))
    return f"exited with code {code}"


def runner_lost_record(node: str, code: Optional[int], ended: Optional[int], left: int, wait_s: float,
                       who: str, unchecked: str = "") -> dict[str, Any]:
    """The exit record of an attempt whose runner on ``node`` ended with ``code`` (a negative
    code: the signal) before writing one. ``who`` (e.g. "the worker") ended ``ended`` of the
    job's processes that still ran, and ``left`` of them had not ended after ``wait_s`` seconds;
    ``ended`` None: it could not check (``unchecked`` says why, and what the admin should do),
    and ``code`` is then a guess."""
    how = "ended" if ended is None else _how(code)
    if ended is None:
        done = unchecked or f"{who} could not check that the job's processes ended: the admin should look for them on {node}"
    elif left:
        done = (f"{who} killed the {ended} processes the job still ran, but {left} had not ended after {wait_s:g} s "
                f"(stuck in the kernel, e.g. in the GPU driver): the admin should check {node}")
    elif ended:
        done = (f"{who} ended the {ended} processes the job still ran (those in sessions of their own included), so "
                f"none of it runs on the attempt's GPUs")
    else:
        done = "none of the job's processes was left running"
    return {"exit_code": code, "lost": True, "error": (
        f"the runner of this attempt on node {node} {how} before the job ended, so the job's end was not recorded; "
        f"{done}. The attempt counts as lost: the queue starts the job again, not counting a failure, unless it is "
        f"the max_lost_attempts-th lost attempt in a row (3 by default): that one counts as failed, and the job's "
        f"retries apply")}
