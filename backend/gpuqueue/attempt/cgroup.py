"""A cgroup v2 per job attempt (Linux): every process of a job, wherever it went, ends with the
attempt.

The runner is the subreaper of its job's processes, and the worker's runner fork server the
subreaper of a killed runner's (``gpuqueue.attempt.orphans``, ``gpuqueue.cluster.forkserver``).
A runner killed *together with* its fork server leaves the job's processes to init, out of
anyone's reach by descent. A cgroup holds them whatever they do: a process cannot leave its
cgroup without write access to ``cgroup.procs`` files, which are root's (or, delegated, the
worker's user's), never a job's of another uid.

Where the worker can write the cgroup v2 tree (it runs as root, or systemd gave it its subtree:
``Delegate=yes``), it makes ``<its own cgroup>/gpuqueue/<scope>/<attempt>`` for each attempt
(:meth:`AttemptCgroups.create`); ``<scope>`` names the worker's state folder, which one worker at
a time holds (``worker_lock.py``), so several workers of one host never touch each other's. The
attempt's runner enters it (:func:`enter`) before it starts the job, so every process of the job
is born in it. A job on several nodes (``gpuqueue.cluster.rayjob``) has one on each node of its
gang: on its first node the attempt's (the runner's, as above); on every other node the worker
makes ``join-<job>-<attempt>`` there and moves the process that starts the node's part of the
job's own Ray into it before that process becomes the job's user and execs Ray, so the raylet
and the job's ranks there (Ray workers) are born in it. When the attempt ends (normally, or its runner was found dead), the worker ends
the cgroup (:func:`end`): ``cgroup.kill`` (Linux 5.14 or later) SIGKILLs every process in it at
once, then it is removed once empty. At start the worker ends the cgroups a previous worker of
the same state folder left (:meth:`AttemptCgroups.sweep`). No controller is enabled: nothing is
limited, only held.

Where that is not possible (no cgroup v2, not writable, no ``cgroup.kill``),
:meth:`AttemptCgroups.open` raises :class:`CgroupsUnavailable`, whose text says why and what the
admin can do, and the worker goes on as before.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Optional

END_WAIT_S = 10.0  # how long :func:`end` waits for a killed cgroup's processes to be gone
POLL_S = 0.005
PARTS = ("job", "join")  # an attempt run here; a part of one whose first node is another (Ray's join)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
REMEDY = ("run the worker as root on a host with cgroup v2 (Linux 5.14 or later), or give it a delegated cgroup "
          "subtree (systemd: Delegate=yes in the worker's unit, as deploy/systemd/gpuqueue-worker@.service has)")


class CgroupsUnavailable(Exception):
    """Why this process cannot make attempt cgroups (the text is the reason, without the remedy)."""


def cgroup2_mount(mounts: str) -> Optional[Path]:
    """Where the cgroup v2 file system is mounted, from the text of ``/proc/self/mounts``."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1].replace("\\040", " "))
    return None


def own_cgroup(cgroups: str) -> Optional[str]:
    """This process's cgroup v2 path (e.g. ``/system.slice/x.service``), from the text of
    ``/proc/self/cgroup`` (its ``0::`` line)."""
    for line in cgroups.splitlines():
        if line.startswith("0::"):
            return line[3:].strip()
    return None


def _procs(cg: Path) -> list[int]:
    with open(cg / "cgroup.procs") as f:
        return [int(p) for p in f.read().split()]


def _running(pids: list[int]) -> int:
    """How many of ``pids`` are processes that still run (not ending: a task on its way out may
    be listed in ``cgroup.procs`` for a moment after it was reaped)."""
    n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        n += state not in (b"Z", b"X")
    return n


def enter(cg: str) -> None:
    """Move the calling process into the cgroup ``cg`` (its children, from now on, are born
    there). Raises OSError. Plain system calls: fit for a ``preexec_fn`` (a forked child of a
    process with threads)."""
    fd = os.open(os.path.join(cg, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def end(cg: Path, wait_s: float = END_WAIT_S) -> tuple[int, int]:
    """SIGKILL every process in the cgroup ``cg`` at once (``cgroup.kill``), wait up to ``wait_s``
    for them to be gone, then remove it. Returns (how many processes it held, how many still
    ran after ``wait_s``: stuck in the kernel, e.g. in a GPU driver; the cgroup is then kept,
    the next :meth:`AttemptCgroups.sweep` tries again). A cgroup already gone: (0, 0)."""
    try:
        held = _running(_procs(cg))
        with open(cg / "cgroup.kill", "w") as f:
            f.write("1")
    except FileNotFoundError:
        return 0, 0
    deadline = time.monotonic() + wait_s
    while True:
        try:
            left = len(_procs(cg))
            if not left:
                os.rmdir(cg)
                return held, 0
        except FileNotFoundError:
            return held, 0
        except OSError as e:
            if e.errno != errno.EBUSY:  # EBUSY: its last processes are still exiting
                raise
            left = 1
        if time.monotonic() >= deadline:
            return held, left
        time.sleep(POLL_S)


class AttemptCgroups:
    """The attempt cgroups of one worker: the folder ``base`` (``<own>/gpuqueue/<scope>``) of the
    cgroup v2 tree, holding one cgroup per attempt this worker runs."""

    def __init__(self, base: Path):
        self.base = base

    @classmethod
    def open(cls, state_dir: Path, node: str, mounts_file: str = "/proc/self/mounts",
             cgroup_file: str = "/proc/self/cgroup") -> "AttemptCgroups":
        """The attempt cgroups of the worker of ``state_dir`` (made if need be), or
        :class:`CgroupsUnavailable` saying why not."""
        try:
            mount = cgroup2_mount(Path(mounts_file).read_text())
            own = own_cgroup(Path(cgroup_file).read_text())
        except OSError as e:
            raise CgroupsUnavailable(f"cannot read {e.filename} ({e.strerror})") from None
        if mount is None:
            raise CgroupsUnavailable("no cgroup v2 file system is mounted (cgroup v1 only)")
        if own is None:
            raise CgroupsUnavailable("this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)")
        own_dir = mount / own.lstrip("/")
        if not (own_dir / "cgroup.procs").is_file():
            raise CgroupsUnavailable(f"its cgroup {own} is not under the cgroup v2 mount {mount}")
        digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
        base = own_dir / "gpuqueue" / f"{_UNSAFE.sub('_', node)[:40]}-{digest}"
        for again in (True, True, False):  # another worker may remove an empty ``gpuqueue`` meanwhile
            try:
                base.mkdir(parents=True, exist_ok=True)
                break
            except FileNotFoundError:
                if again:
                    continue
                raise CgroupsUnavailable(f"cannot create the cgroup {base} (it vanished while made)") from None
            except OSError as e:
                raise CgroupsUnavailable(f"cannot create the cgroup {base} ({e.strerror})") from None
        if not (base / "cgroup.kill").is_file():
            for d in (base, base.parent):
                try:
                    d.rmdir()
                except OSError:
                    pass
            raise CgroupsUnavailable("the kernel has no cgroup.kill (Linux 5.14 or later has)")
        for procs in (own_dir / "cgroup.procs", base / "cgroup.procs"):
            if not os.access(procs, os.W_OK):
                raise CgroupsUnavailable(f"{procs} is not writable by uid {os.geteuid()}")
        return cls(base)

    @staticmethod
    def name(job_id: str, number: int, part: str = "job") -> str:
        """The cgroup name of attempt ``number`` of ``job_id``: ``part`` is ``job`` where this node
        runs the attempt (its runner), ``join`` where it runs another node's part of a multi-node
        attempt (``gpuqueue.cluster.rayjob``); the two never share a name."""
        if part not in PARTS:
            raise ValueError(f"not a part of an attempt: {part!r} (one of {', '.join(PARTS)})")
        return f"{part}-{_UNSAFE.sub('_', job_id)[:200]}-{int(number)}"

    def create(self, job_id: str, number: int, part: str = "job") -> Path:
        """A new, empty cgroup for the attempt (or its ``part``, :meth:`name`; one of the same name
        that a dead worker left is ended first). Raises OSError."""
        cg = self.base / self.name(job_id, number, part)
        try:
            cg.mkdir()
        except FileExistsError:
            end(cg)
            cg.mkdir()
        return cg

    def sweep(self) -> list[tuple[str, int, int]]:
        """End every attempt cgroup here, of either part (call it at the worker's start, when none
        of its own runs yet): what a worker that died left. (name, processes it held, processes left) of each."""
        out = []
        for entry in sorted(os.scandir(self.base), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                held, left = end(Path(entry.path), wait_s=2.0)
                out.append((entry.name, held, left))
        return out

    def close(self) -> None:
        """Remove this worker's folder (and ``gpuqueue`` above it) if nothing is left in them."""
        for d in (self.base, self.base.parent):
            try:
                d.rmdir()
            except OSError:
                return
