"""What a job leaves behind: the runner as the subreaper of the job's processes (Linux).

The runner ends a job by signalling its process group. A process the job starts in a session of
its own (``setsid``) is not in that group: it ran on after the job's end, as the job's user, on
GPUs the queue had given to the next job, and no cancel reached it. With
``PR_SET_CHILD_SUBREAPER`` set on the runner, every orphan among the job's processes becomes the
runner's child instead of init's: the runner reaps those that end (:func:`reap_ended`) and kills
the rest, with all their descendants at once, once the job has ended (:func:`end_all`). Being its
unreaped children, their pids cannot be another process's when it signals them; their
descendants it signals through pidfds checked to be theirs.

One level up, the worker's runner fork server (``gpuqueue.cluster.forkserver``) is a subreaper
too: a runner that is killed (the out-of-memory killer, ``kill -9``, a crash) leaves the job's
processes to it, and it ends them with :func:`kill_strays`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Optional

PR_SET_CHILD_SUBREAPER = 36
STRAY_WAIT_S = 10.0  # how long a dead runner's processes are killed before its end is said anyway


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False where it cannot."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        out[int(name)] = (int(ppid), state.decode(errors="replace"))
    return out


def children(parent: int) -> list[tuple[int, str]]:
    """(pid, state letter) of every process whose parent is ``parent``."""
    return [(pid, state) for pid, (ppid, state) in _table().items() if ppid == parent]


def _parent_of(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state, ppid = f.read().rsplit(b")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return None if state == b"Z" else int(ppid)


def _pin(pid: int, parent: int, parent_fd: Optional[int]) -> Optional[int]:
    """A pidfd of ``pid`` if it is (still) a running child of ``parent``, else None. A pid that
    is not this process's own child may be reaped and taken by another process at any moment:
    the pidfd holds the process itself, and the check made after it was opened, while
    ``parent`` (its pidfd ``parent_fd``; None: this process's own unreaped child, whose pid
    cannot change hands) was alive, proves that it is the child of ``parent``."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):  # gone, or no pidfds (Linux < 5.3): only own children then
        return None
    try:
        if _parent_of(pid) == parent:
            if parent_fd is not None:
                signal.pidfd_send_signal(parent_fd, 0)  # ProcessLookupError: reaped meanwhile
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def kill_strays(keep: set[int]) -> tuple[set[int], int]:
    """SIGKILL every process below this one but those in ``keep`` and theirs: each child of this
    process not in ``keep`` (an orphan re-parented here) with all its descendants at once (one
    pass, so a process that forks cannot outrun the kill a level at a time). Its children not
    in ``keep`` that ended are reaped. Returns (the pids signalled, how many processes it found
    running): call it again until it finds none, as what they started since is re-parented here.
    Descendants are signalled through pidfds checked to be theirs (:func:`_pin`), so a pid that
    changed hands in the meantime is never signalled."""
    me = os.getpid()
    table = _table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    targets: list[tuple[int, Optional[int]]] = []  # (pid, its pidfd; None: own child)
    for pid in kids.get(me, []):
        if pid in keep:
            continue
        if table[pid][1] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        else:
            targets.append((pid, None))
    signalled: set[int] = set()
    try:
        i = 0
        while i < len(targets):  # breadth first: a parent is pinned before its children
            pid, fd = targets[i]
            i += 1
            for child in kids.get(pid, []):
                cfd = _pin(child, pid, fd)
                if cfd is not None:
                    targets.append((child, cfd))
        for pid, fd in targets:
            try:
                if fd is None:
                    os.kill(pid, signal.SIGKILL)
                else:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                signalled.add(pid)
            except OSError:  # ended meanwhile
                pass
    finally:
        for _, fd in targets:
            if fd is not None:
                os.close(fd)
    return signalled, len(targets)


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
    """Kill and reap every process below this one (call it once the job's main process is
    reaped: what is left are the job's orphans and theirs, :func:`kill_strays`); how many were
    still running."""
    ended: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        hit, running = kill_strays(set())
        ended |= hit
        if not running or time.monotonic() >= deadline:
            return len(ended)
        time.sleep(0.02)


def session_alive(sid: int) -> bool:
    """Whether a process (not a zombie) still runs in session ``sid``. A session's id stays
    reserved while any process is in it (the kernel gives no new process that pid), so this
    cannot mistake a newcomer for one of its processes: how the embedded queue sees that a
    guarded runner (in its guard's session) still runs after its guard ended."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, ValueError):
            continue
        if len(fields) > 3 and fields[3] == str(sid).encode() and fields[0] != b"Z":
            return True
    return False
