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

A job on several nodes has the same on each node of its gang (``gpuqueue.cluster.rayjob``): on
its first node its runner enters them as above; on the others the worker starts the node's part
of the job's own Ray (``ray start --address``, whose raylet's workers run the job's ranks there)
through :func:`exec_as` (``python -I -c`` :data:`EXEC_AS`), which enters them as root, then
becomes the job's uid and runs Ray. Its Ray folder is made in the identity's folder, so it is
``/tmp/gqr-<random>`` inside (a short path: Ray's Unix sockets are made there). Where a node
cannot enter them after all, that path is made a link to the folder (:func:`link_instead`) and
the job's processes there use the node's ``/tmp`` and ``/dev/shm``, as with ``--private-tmp off``.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import stat
import subprocess
import sys
from typing import Iterable, Optional, Sequence

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
PR_SET_PDEATHSIG = 1

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
    """Move this process (the runner, as root, before the job starts; single-threaded) into
    namespaces of its own where ``tmp`` is ``/tmp`` and ``/var/tmp`` and ``/dev/shm`` is an empty
    tmpfs of at most ``shm_bytes``. Raises OSError, having changed nothing: where a mount fails,
    the process goes back to the namespaces it had (``setns``)."""
    libc = _libc()
    before = [os.open(f"/proc/self/ns/{ns}", os.O_RDONLY) for ns in ("mnt", "ipc")]
    try:
        _call(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC), "unshare(CLONE_NEWNS|CLONE_NEWIPC)")
        try:
            _mount(libc, None, "/", None, MS_REC | MS_SLAVE)  # as _own_namespaces
            for d in TMP_DIRS:
                if os.path.isdir(d):
                    _mount(libc, tmp, d, None, MS_BIND)
            _mount(libc, "tmpfs", SHM_DIR, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={max(shm_bytes, 4096)}")
        except OSError:
            for fd, kind in zip(before, (CLONE_NEWNS, CLONE_NEWIPC)):
                _call(libc.setns(fd, kind), "setns back to the node's namespaces")
            raise
    finally:
        for fd in before:
            os.close(fd)
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


def link_instead(links: dict[str, str]) -> None:
    """Where the namespaces could not be entered: make each ``inside`` path of ``links`` (a
    job's Ray folder as its processes name it, ``/tmp/gqr-<random>``) a link to its folder on
    the node (``outside``), so the job runs with the node's ``/tmp`` and finds it there. A link
    of this process's uid that is already there, to the same folder, is kept; a file or link of
    another uid's by that name is replaced. Raises OSError (a folder by that name, say)."""
    for inside, outside in links.items():
        if os.path.dirname(inside) != "/tmp" or not os.path.basename(inside).startswith("gqr-"):
            raise OSError(f"not a job's Ray folder in /tmp: {inside}")
        try:
            st = os.lstat(inside)
            if stat.S_ISLNK(st.st_mode) and st.st_uid == os.geteuid() and os.readlink(inside) == outside:
                continue  # this process's own, made before
        except FileNotFoundError:
            pass
        # the name is on root's command line (exec_as), which every uid can read: another uid may
        # have put a link of its own there first. Made under a name of root's choosing, then
        # renamed over it (root may, in the sticky /tmp); a folder there: OSError
        tmp = os.path.join("/tmp", f".{os.path.basename(inside)}-{secrets.token_hex(8)}")
        os.symlink(outside, tmp)
        try:
            os.rename(tmp, inside)
        except OSError:
            os.unlink(tmp)
            raise


# what the worker runs (``python -I -c EXEC_AS ...``, :func:`exec_as`): isolated from the job's
# PYTHONPATH, which root must not import from; the ``%r`` is the folder that holds gpuqueue
EXEC_AS = "import sys; sys.path.insert(0, %r); from gpuqueue.attempt.privtmp import exec_as; sys.exit(exec_as(sys.argv[1:]))"


def exec_as(args: Sequence[str]) -> int:
    """``TMP SHM_BYTES UID GID PARENT INSIDE OUTSIDE -- ARGV...`` (as root): enter the job's own
    namespaces (:func:`enter`; where that fails, :func:`link_instead` ``{INSIDE: OUTSIDE}`` and
    say so on stderr), become ``UID``/``GID`` with no supplementary groups, ask to die with
    ``PARENT`` (the worker: a change of uid clears the earlier request) and exec ``ARGV`` with
    this environment. Returns only on failure (1)."""
    try:
        cut = list(args).index("--")
        tmp, shm, uid, gid, parent, inside, outside = args[:cut]
        argv = list(args[cut + 1:])
        if not argv:
            raise ValueError("no command after --")
        try:
            enter(tmp, int(shm))
        except OSError as e:
            print(f"gpuqueue: the job's processes on this node run with the node's /tmp and /dev/shm, not their own: "
                  f"{e}", file=sys.stderr, flush=True)
            link_instead({inside: outside})
        os.setgroups([])
        os.setresgid(int(gid), int(gid), int(gid))
        os.setresuid(int(uid), int(uid), int(uid))
        os.chdir(inside)  # as the owner, in its namespaces: never root through a path the owner controls
        _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != int(parent):  # the worker ended meanwhile
            return 1
        os.execv(argv[0], argv)
    except (OSError, ValueError) as e:
        print(f"gpuqueue: cannot start the job's process on this node: {e}", file=sys.stderr, flush=True)
    return 1
