"""What a job leaves behind: the runner as the subreaper of the job's processes (Linux).

The runner ends a job by signalling its process group. A process the job starts in a session of
its own (``setsid``) is not in that group: it ran on after the job's end, as the job's user, on
GPUs the queue had given to the next job, and no cancel reached it. With
``PR_SET_CHILD_SUBREAPER`` set on the runner, every orphan among the job's processes becomes the
runner's child instead of init's: the runner reaps those that end (:func:`reap_ended`) and kills
the rest once the job has ended (:func:`end_all`). Being its unreaped children, their pids cannot
be another process's when it signals them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False where it cannot."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(parent: int) -> list[tuple[int, str]]:
    """(pid, state letter) of every process whose parent is ``parent``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == parent:
            out.append((int(name), state.decode(errors="replace")))
    return out


def reap_ended(keep: int) -> None:
    """Reap this process's children that ended (zombies), but ``keep`` (the job's main process,
    which the runner reaps itself), so the job's orphans leave no zombies piling up."""
    for pid, state in children(os.getpid()):
        if state == "Z" and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def end_all(timeout_s: float = 10.0) -> int:
    """Kill and reap every child of this process (call it once the job's main process is
    reaped: what is left are the job's orphans); how many were still running."""
    ended: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kids = children(os.getpid())
        if not kids:
            break
        for pid, state in kids:
            if state != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                    ended.add(pid)
                except ProcessLookupError:
                    pass
        time.sleep(0.02)
        for pid, _ in kids:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
    return len(ended)
