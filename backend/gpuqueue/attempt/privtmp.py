"""Each job's own ``/tmp``, ``/var/tmp`` and ``/dev/shm``, as systemd's ``PrivateTmp`` gives a
service: the node's are one folder for every user, where another user's job can squat the name
of a file or shared memory segment this user's program will use, read what is left readable,
and where programs that ignore ``TMPDIR`` write anyway.

A root worker that runs jobs under their users' own identities has each attempt's runner,
before it starts the job as the job's user, enter (:func:`enter`) a mount namespace and an IPC
namespace of its own: the mount tree is made a slave of the node's (nothing mounted here
reaches the node; what the node mounts later still comes in),
the identity's own temporary folder (``<state-dir>/tmp/<uid>``, mode 700, its ``TMPDIR``) is
bound over ``/tmp`` and ``/var/tmp``, and a fresh tmpfs (mode 1777, bounded) is mounted over
``/dev/shm`` (and a fresh ``mqueue`` over ``/dev/mqueue``, where there is one). Every process of
the job descends from the runner, so all of them (torchrun's ranks, DataLoader workers, NCCL's
segments between ranks) share these; no other job sees them. The tmpfs goes with the last
process of the attempt: nothing of the job stays in the node's memory.

The IPC namespace: System V shared memory, semaphores and message queues and POSIX message
queues are the job's own too; they are used between a job's own processes (which share it),
not with the node's services. What stays shared: abstract unix sockets (the network
namespace), and the rest of the file system (``/var/lock``, ``/run/user``...).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from typing import Iterable, Optional

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19

TMP_DIRS = ("/tmp", "/var/tmp")  # bound to the identity's own folder
SHM_DIR = "/dev/shm"  # a fresh tmpfs
MQUEUE_DIR = "/dev/mqueue"  # a fresh mqueue (the IPC namespace's own)
HIDDEN = (*TMP_DIRS, SHM_DIR)  # what the node has there is out of the job's sight

REMEDY = ("run the worker as root where it may make mount namespaces (CAP_SYS_ADMIN; in a container: "
          "not forbidden by its seccomp or AppArmor profile), or turn this off with --private-tmp off")


def _call(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: ctypes.CDLL, source: Optional[str], target: str, fstype: Optional[str], flags: int,
           data: Optional[str] = None) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    _call(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
          f"mount {fstype or 'bind'} on {target}")


def _own_namespaces(libc: ctypes.CDLL) -> None:
    _call(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
    # what is mounted here never reaches the node's tree; what the node mounts later (an NFS home,
    # autofs) still comes in, as systemd's PrivateTmp does (MS_SLAVE, not MS_PRIVATE)
    _mount(libc, None, "/", None, MS_REC | MS_SLAVE)


def enter(tmp: str, shm_bytes: int) -> None:
    """Move this process (the runner, as root, before the job starts) into namespaces of its own
    where ``tmp`` is ``/tmp`` and ``/var/tmp`` and ``/dev/shm`` is an empty tmpfs of at most
    ``shm_bytes``. Raises OSError (nothing is changed where ``unshare`` fails)."""
    libc = _libc()
    _own_namespaces(libc)
    for d in TMP_DIRS:
        if os.path.isdir(d):
            _mount(libc, tmp, d, None, MS_BIND)
    _mount(libc, "tmpfs", SHM_DIR, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={max(shm_bytes, 4096)}")
    if os.path.isdir(MQUEUE_DIR):
        try:
            _mount(libc, "mqueue", MQUEUE_DIR, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass  # POSIX message queues are the IPC namespace's own anyway; only the listing shows the node's


def half_memory() -> int:
    """Half this node's memory, in bytes: the default bound of a job's ``/dev/shm`` (tmpfs's own)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def hidden(paths: Iterable[str]) -> Optional[str]:
    """The first of ``paths`` (folders the job needs: the state folder, the shared root) that lies
    under a folder a job's namespace hides, as ``"PATH (under DIR)"``; None if none does."""
    for p in paths:
        real = os.path.realpath(p)
        for d in HIDDEN:
            rd = os.path.realpath(d)
            if real == rd or real.startswith(rd.rstrip("/") + "/"):
                return f"{p} (under {d})"
    return None


_PROBE = ("import ctypes, sys\n"
          "from gpuqueue.attempt import privtmp\n"
          "libc = privtmp._libc()\n"
          "privtmp._own_namespaces(libc)\n"
          "privtmp._mount(libc, 'tmpfs', privtmp.SHM_DIR, 'tmpfs', privtmp.MS_NOSUID | privtmp.MS_NODEV, 'size=4096')\n")


def probe(env: dict[str, str]) -> Optional[str]:
    """Why a job cannot get namespaces of its own on this node (tried once, in a child process
    started with ``env``, which must import gpuqueue), or None where it can."""
    if os.geteuid() != 0:
        return "the worker does not run as root"
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot try it ({e})"
    if out.returncode == 0:
        return None
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    return lines[-1].removeprefix("OSError: ") if lines else f"the probe exited with {out.returncode}"
