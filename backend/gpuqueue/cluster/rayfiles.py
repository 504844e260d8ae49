"""The files of a job's Ray on a node that the worker (root) touches in folders the job's owner
controls (``gpuqueue.cluster.rayjob``): the node's Ray log, written and read back, and the scratch
folders of ranks that were killed. The owner's jobs may plant links there, so nothing here
follows one or touches a file that is not the owner's."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ..attempt.identity import Identity
from ..attempt.jobdir import open_owned_file
from ..attempt.removal import PARENT_FLAGS, remove_at


def open_log(folder: Path, name: str, ident: Optional[Identity]) -> int:
    """An append descriptor on ``folder/name``, the owner's (mode 600), made if need be; opened
    through the folder's descriptor, never following a link: the folder is the owner's, whose
    jobs may put there a link (or a hard link) to a file of root's, which root would then write
    to and hand over. Raises OSError (PermissionError: not a plain file of the owner's)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
            made = True
        except FileExistsError:
            fd = os.open(name, flags, dir_fd=dfd)
            made = False
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    owner = ident.uid if ident is not None else os.geteuid()
    if not made and (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != owner):
        os.close(fd)
        raise PermissionError(f"{folder / name} is not a plain file of uid {owner}: not written")
    if made and ident is not None:
        os.fchown(fd, ident.uid, ident.gid)
    return fd


def log_tail(folder: Path, name: str, owner: int, size: int = 1500) -> str:
    """The last ``size`` characters of ``folder/name``, read through the folder's descriptor
    without following a link, and only where it is a plain file of ``owner``'s (the folder is
    the owner's: its job may put a link there to a file only root may read); else ``""``."""
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return ""
    try:
        fd = open_owned_file(dfd, name, owner)
    finally:
        os.close(dfd)
    if fd is None:
        return ""
    try:
        size_now = os.fstat(fd).st_size
        start = max(0, size_now - 4 * size)
        return os.pread(fd, size_now - start, start).decode(errors="replace")[-size:]
    except OSError:
        return ""
    finally:
        os.close(fd)


def remove_scratch(tmp: Path, job_id: str, uid: int) -> int:
    """Remove the scratch folders the job's ranks on this node made in ``tmp`` (the job's
    ``/tmp`` here: ``gpuqueue-<job>-rank<N>-*``, ``gpuqueue.job.raynodes``) that a killed rank
    left: only folders of ``uid``'s, never through a link (``gpuqueue.attempt.removal``). Returns how many."""
    prefix = f"gpuqueue-{job_id}-rank"
    n = 0
    try:
        tfd = os.open(tmp, PARENT_FLAGS)
    except OSError:
        return 0
    try:
        with os.scandir(tfd) as it:
            entries = list(it)
        for entry in entries:
            try:
                if (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_uid == uid):
                    remove_at(tfd, entry.name)
                    n += 1
            except OSError:
                continue
    except OSError:
        pass
    finally:
        os.close(tfd)
    return n
