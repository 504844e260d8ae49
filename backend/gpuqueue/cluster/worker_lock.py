"""One worker per state folder: ``gpuqueue worker`` holds an OS lock (``flock``) on
``<state-dir>/worker.lock`` for as long as it runs.

Two workers on one ``--state-dir`` would tail, sweep and clean each other's attempt folders, so
the second is refused at start, naming the first (its pid, node and host). The lock belongs to
the process's open file: the kernel drops it when the process ends, however it ends (``kill -9``
included), so a worker restarted after a crash is never refused. The file itself stays; what it
says (the holder) is only read when the lock is held by someone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

LOCK_NAME = "worker.lock"

_HELD: list[int] = []  # the open lock files of this process: kept open (and locked) until it ends


class StateDirBusy(Exception):
    """Another live process holds the state folder's lock; the message names it and the fix."""


def lock_state_dir(state_dir: Path, node: str) -> Path:
    """Make ``state_dir`` if needed and take its lock for this process's life, writing who holds
    it. Raises :class:`StateDirBusy` if another process holds it, ``OSError`` if the folder or
    the lock file cannot be made. Returns the lock file's path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        # the worker's own: a file others may open is one they may flock (read-only will do), and
        # one waiting in flock takes it the moment a worker restarts, which is then refused
        os.fchmod(fd, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read(fd)
        os.close(fd)
        raise StateDirBusy(busy_message(state_dir, holder)) from None
    except BaseException:
        os.close(fd)
        raise
    me = {"pid": os.getpid(), "node": node, "host": socket.gethostname(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
    _HELD.append(fd)
    return path


def _read(fd: int) -> Optional[dict[str, Any]]:
    """What the holder wrote in the lock file (None: nothing readable yet)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode(errors="replace") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def busy_message(state_dir: Path, holder: Optional[dict[str, Any]]) -> str:
    """The one line that refuses a second worker on ``state_dir``, held by ``holder``."""
    if holder:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since") or 0)))
        who = (f"pid {holder.get('pid')}, node {holder.get('node')}, host {holder.get('host')}, "
               f"running since {since}")
    else:
        who = "a process that is starting"
    return (f"another worker uses the state folder {state_dir} ({who}): two workers on one folder would "
            f"sweep and clean each other's job folders; give this worker a --state-dir of its own "
            f"($GPUQUEUE_STATE_DIR), or stop that one first")
