"""Removing, as root, a folder that a job's owner controls (the job's scratch and work folders,
its Ray folder, what its uid left in /dev/shm), while the owner's other jobs may still run on the
node and change it meanwhile.

``shutil.rmtree`` of Python 3.11 is not made for that: it opens the path it is given, and each
subfolder it listed, with a plain ``O_RDONLY``, so a name swapped for a link between its check
and its open is followed (a link to the owner's FIFO blocks root's thread for good, one to a
device opens it as root), and it recurses once per level (a deep tree raises ``RecursionError``,
which ``ignore_errors`` does not catch). :func:`remove_tree` opens nothing but folders
(``O_DIRECTORY | O_NOFOLLOW``: any other name, link, FIFO or device, is unlinked unopened),
each through its parent's descriptor (``tests/cluster/test_hostile_gang.py``).

A tree of any depth is removed without recursion and with at most :data:`MAX_HELD` folders
open: a folder met deeper than that is renamed (within the tree's file system, through the
descriptors of its parent and of the top folder) into the top folder under a fresh name, so
the tree is flattened as it goes (a tree some thousands of folders deep, once left for good:
``tests/cluster/test_local_sweep.py``). One call takes at most :data:`MAX_WORK` steps (listing a name, removing it), so it
ends whatever the owner keeps adding meanwhile; what it leaves is said (:func:`remove_tree`
returns False) and the next call goes on from there; likewise once its ``stop`` is set (between
two names)."""

from __future__ import annotations

import errno
import os
import threading
import uuid
from pathlib import Path
from typing import Optional

# a folder, opened only if it is one: never a link (O_NOFOLLOW), and never anything else (O_DIRECTORY
# fails before the open: a FIFO would block root for good, a device would be opened as root)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
PARENT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the folder root names (/tmp, <state>/work, ...)
MAX_HELD = 32  # folders below the top one held open at once; a deeper one is moved up to the top
MAX_WORK = 1_000_000  # steps of one call, each name listed and each name unlinked or moved counting one (so about
# 500,000 names are removed a call): over it, the rest is left for the next
BATCH = 1024  # names listed from a folder at a time


def remove_tree(path: Path, stop: Optional[threading.Event] = None) -> bool:
    """Remove ``path`` and all under it, as root, in a folder its owner controls (module
    docstring): no link is followed and nothing but a folder is opened, at any moment. Returns
    whether ``path`` is gone (a link or file there is unlinked, not followed). ``stop``, once
    set: the rest is left."""
    try:
        pfd = os.open(path.parent, PARENT_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    try:
        remove_at(pfd, path.name, stop)
        try:
            os.lstat(path.name, dir_fd=pfd)
        except FileNotFoundError:
            return True
        except OSError:
            pass
        return False
    finally:
        os.close(pfd)


def remove_at(dfd: int, name: str, stop: Optional[threading.Event] = None) -> None:
    """Remove ``name`` in the folder ``dfd`` as :func:`remove_tree` does; what cannot be
    removed (or is over :data:`MAX_WORK`, or comes after ``stop`` is set) is left."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):  # a file, link, FIFO, device: its name goes, unopened
            _unlink(dfd, name)
        return
    try:
        _empty(fd, stop)
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=dfd)
    except OSError:
        pass


class _Folder:
    """A folder being emptied: its descriptor, its name in its parent, the names listed from it
    not yet looked at, and those that could not be removed (not looked at again by this call)."""

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        self.pending: list[str] = []
        self.left: set[str] = set()

    def list_more(self) -> int:
        """With no name pending, list up to :data:`BATCH` more (the folder as it is now, those
        :attr:`left` skipped); how many names were read. None pending after it: it is empty."""
        if self.pending:
            return 0
        read = 0
        try:
            with os.scandir(self.fd) as it:
                for entry in it:
                    read += 1
                    if entry.name not in self.left:
                        self.pending.append(entry.name)
                        if len(self.pending) >= BATCH:
                            break
        except OSError:
            self.pending.clear()  # cannot be listed: left as it is
        self.pending.reverse()  # taken from the end, in listing order
        return read


def _empty(top: int, stop: Optional[threading.Event] = None) -> None:
    """Remove everything in the folder ``top``, depth first, without recursion: at most
    :data:`MAX_HELD` folders under it open at once, a deeper one moved up into ``top``. Each
    turn reads or removes a name (at most :data:`MAX_WORK` in all) or leaves a folder, so it
    ends however the owner changes the tree meanwhile; and at the turn after ``stop`` is set."""
    work = MAX_WORK
    stack: list[_Folder] = [_Folder(top, "")]
    try:
        while stack and work > 0 and not (stop is not None and stop.is_set()):
            here = stack[-1]
            work -= here.list_more()
            if not here.pending:
                stack.pop()
                if stack:  # an emptied subfolder: closed, then removed from its parent
                    os.close(here.fd)
                    try:
                        os.rmdir(here.name, dir_fd=stack[-1].fd)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        stack[-1].left.add(here.name)
                continue
            name = here.pending.pop()
            work -= 1
            sub = _open_folder(here.fd, name)
            if sub is None:  # not a folder: its name goes, unopened (or it is gone)
                if not _unlink(here.fd, name):
                    here.left.add(name)
            elif sub == UNOPENED:
                here.left.add(name)
            elif len(stack) <= MAX_HELD:
                stack.append(_Folder(sub, name))
            else:  # too deep to hold: moved up into the top folder, emptied from there later
                os.close(sub)
                try:
                    os.rename(name, f".gq-rm-{uuid.uuid4().hex}", src_dir_fd=here.fd, dst_dir_fd=top)
                except FileNotFoundError:
                    pass
                except OSError:  # another file system mounted there, ...
                    here.left.add(name)
    finally:
        for f in stack[1:]:
            os.close(f.fd)


UNOPENED = -1  # _open_folder: a folder that could not be opened


def _open_folder(dfd: int, name: str) -> Optional[int]:
    """A descriptor on the folder ``name`` in ``dfd``; None if it is no folder (or gone),
    :data:`UNOPENED` if it is one that cannot be opened."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
            return None
        return UNOPENED


def _unlink(dfd: int, name: str) -> bool:
    """Unlink ``name`` in ``dfd`` (not a folder); whether it is gone."""
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
