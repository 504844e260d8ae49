"""The files of a job's Ray on a node that the worker (root) touches in folders the job's owner
controls (``gpuqueue.cluster.rayjob``): the node's Ray log, written and read back, and the scratch
folders of ranks that were killed. The owner's jobs may plant links there, so nothing here
follows one or touches a file that is not the owner's."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Optional

from ..attempt.identity import Identity
from ..attempt.jobdir import open_owned_file


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
    left: only folders of ``uid``'s, never through a link (:func:`remove_tree`). Returns how many."""
    prefix = f"gpuqueue-{job_id}-rank"
    n = 0
    try:
        tfd = os.open(tmp, _PARENT_FLAGS)
    except OSError:
        return 0
    try:
        with os.scandir(tfd) as it:
            entries = list(it)
        for entry in entries:
            try:
                if (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)
                        and entry.stat(follow_symlinks=False).st_uid == uid):
                    _remove_at(tfd, entry.name, 0)
                    n += 1
            except OSError:
                continue
    except OSError:
        pass
    finally:
        os.close(tfd)
    return n


# a folder, opened only if it is one: never a link (O_NOFOLLOW), and never anything else (O_DIRECTORY
# fails before the open: a FIFO would block root for good, a device would be opened as root)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PARENT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # a folder root chose (/tmp, <state>/tmp/<uid>)
MAX_DEPTH = 200  # deeper than this, a tree is left as it is (neither root's stack nor its descriptors run out)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and all under it, as root, where the owner (and its jobs, still running
    elsewhere on the node) controls it: nothing but a folder is ever opened and no link is
    followed, at any moment (a name swapped for a link, FIFO or device between a check and the
    open is unlinked, never opened). ``shutil.rmtree`` of Python 3.11 is not that: it opens the
    path, and each subfolder it found, with a plain ``O_RDONLY``, following a link swapped in
    meanwhile (or already there at the top): a link to a FIFO blocks the worker's thread for
    good, one to a device opens it as root. What cannot be removed is left, silently."""
    try:
        pfd = os.open(path.parent, _PARENT_FLAGS)
    except OSError:
        return
    try:
        _remove_at(pfd, path.name, 0)
    finally:
        os.close(pfd)


def _remove_at(dfd: int, name: str, depth: int) -> None:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, link, FIFO, device: its name goes, unopened
            try:
                os.unlink(name, dir_fd=dfd)
            except OSError:
                pass
        return
    try:
        if depth >= MAX_DEPTH:
            return
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        for n in names:
            _remove_at(fd, n, depth + 1)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dfd)
    except OSError:
        pass
