"""What a job leaves in the node's shared memory, ``/dev/shm``: POSIX shared memory
(``shm_open``, Python's ``multiprocessing.shared_memory``, PyTorch's DataLoader and NCCL
segments), which stays in the node's memory after every process of the job has ended, until
someone removes it. A worker that runs jobs under dynamic identities (uids that only the queue's
jobs use) removes what a uid left there once no attempt of that uid runs or is being launched on
the node, and no process of that uid runs there at all (``gpuqueue.cluster.worker_tail``).

Removal as root in a folder every user may write: each entry is looked at without following a
link, and only one of the uid's own is removed (a folder with what is in it, through
``gpuqueue.attempt.removal``, which follows no link, at any depth). The folder's sticky bit keeps any other user
from renaming another entry into its place meanwhile; the uid's own processes have all ended.
A job may leave millions of names there (some seconds a million to remove): the worker removes
them in a thread of their own, which a launch of the uid stops first (``stop``).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Optional

import psutil

from .removal import remove_tree

SHM = Path("/dev/shm")


def uid_runs(uid: int) -> bool:
    """Whether any process of the node runs as ``uid`` (real or effective)."""
    for p in psutil.process_iter(["uids"]):
        uids = p.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            return True
    return False


def remove_owned(uid: int, folder: Path = SHM, stop: Optional[threading.Event] = None) -> int:
    """Remove every entry of ``folder`` that belongs to ``uid``; the number removed. Entries that
    go away meanwhile, or that cannot be removed, are left (the next call tries again); so is
    everything once ``stop`` is set (it is looked at between two names)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if stop is not None and stop.is_set():
            break
        path = folder / name
        try:
            st = os.lstat(path)
            if st.st_uid != uid:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not remove_tree(path, stop):
                    continue
            else:
                os.unlink(path)
        except OSError:
            continue
        removed += 1
    return removed
