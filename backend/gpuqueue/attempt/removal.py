"""Removing, as root, a folder that a job's owner controls (the job's scratch and work folders,
its Ray folder, what its uid left in /dev/shm), while the owner's other jobs may still run on the
node and change it meanwhile.

``shutil.rmtree`` of Python 3.11 is not made for that: it opens the path it is given, and each
subfolder it listed, with a plain ``O_RDONLY``, so a name swapped for a link between its check
and its open is followed (a link to the owner's FIFO blocks root's thread for good, one to a
device opens it as root), and it recurses once per level (a deep tree raises ``RecursionError``,
which ``ignore_errors`` does not catch). :func:`remove_tree` opens nothing but folders
(``O_DIRECTORY | O_NOFOLLOW``: any other name, link, FIFO or device, is unlinked unopened),
each through its parent's descriptor, at most :data:`MAX_DEPTH` levels deep
(``tests/cluster/test_hostile_gang.py``)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# a folder, opened only if it is one: never a link (O_NOFOLLOW), and never anything else (O_DIRECTORY
# fails before the open: a FIFO would block root for good, a device would be opened as root)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PARENT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the folder root names (/tmp, <state>/work, ...)
MAX_DEPTH = 200  # deeper than this, a tree is left as it is (neither root's stack nor its descriptors run out)


def remove_tree(path: Path) -> bool:
    """Remove ``path`` and all under it, as root, in a folder its owner controls (module
    docstring): no link is followed and nothing but a folder is opened, at any moment. Returns
    whether ``path`` is gone (a link or file there is unlinked, not followed)."""
    try:
        pfd = os.open(path.parent, PARENT_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    try:
        remove_at(pfd, path.name)
        try:
            os.lstat(path.name, dir_fd=pfd)
        except FileNotFoundError:
            return True
        except OSError:
            pass
        return False
    finally:
        os.close(pfd)


def remove_at(dfd: int, name: str, depth: int = 0) -> None:
    """Remove ``name`` in the folder ``dfd`` as :func:`remove_tree` does (``depth``: its level)."""
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
            remove_at(fd, n, depth + 1)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dfd)
    except OSError:
        pass
