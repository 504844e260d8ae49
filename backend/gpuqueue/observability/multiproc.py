"""One ``/metrics`` for a service that forks several processes onto one port.

``gpuqueue api --processes N`` (N > 1) forks N processes that share the listening socket; a
scrape lands on any one of them. Without help each would answer with its own counters, so a
counter would jump between the processes' values and Prometheus' ``rate()`` would see resets.
prometheus-client's multiprocess mode fixes that: every process writes its values to files in
one directory (``PROMETHEUS_MULTIPROC_DIR``) and a scrape adds them all up.

The directory (``prepare_dir``) is private to the service's user (mode 0700, not a link, owned
by that user) and emptied at each start of the service, before any process writes to it, so a
restart counts nothing of the last run. ``enable`` sets the variable; it must run before the
first metric is created (the API calls it before it forks). A scrape (``scrape_registry``)
first forgets the live gauges of processes that have exited (``mark_process_dead``: tornado
restarts a process that died), then reads every file (``FilesCollector``: one a process is
creating at that moment, still empty, holds nothing yet). Counters and histograms of an exited
process stay counted, so totals never go backwards when one process is replaced.

What multiprocess mode cannot add up is reported per process instead, with a ``pid`` label:
prometheus-client's ``process_*`` metrics (CPU, memory, open files) of each live process of the
service (``LiveProcessesCollector``). Python's ``python_gc_*`` and ``python_info`` are left out.

``fork`` forks the processes. When the directory is the default one in the temporary folder
(the admin named none), the parent removes it when the service stops cleanly (SIGTERM or
SIGINT to the parent: it stops its processes, waits for them, then removes the directory and
exits with status 0), so stopped services leave nothing in ``/tmp``. A directory the admin
named is kept.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import re
import signal
import stat
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any, Iterable, Optional

log = logging.getLogger("gpuqueue.observability.multiproc")

ENV = "PROMETHEUS_MULTIPROC_DIR"
_DB = re.compile(r"^[a-z_]+_(\d+)\.db$")
_LIVE_GAUGE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class MetricsDirError(ValueError):
    """The metrics directory cannot be used; the message names the fix."""


def default_dir(service: str, port: int) -> Path:
    """Where a service keeps its metrics files when the admin names no directory: one per user,
    service and port under the temporary folder (systemd's ``PrivateTmp`` makes it private to
    the unit)."""
    return Path(tempfile.gettempdir()) / f"gpuqueue-{service}-{os.getuid()}-{port}-metrics"


def prepare_dir(path: str | Path) -> Path:
    """Create ``path`` (mode 0700) or check that it is private to this user (a directory, not a
    link, owned by this user, no access for group or others), then delete the metrics files
    (``*.db``) a former run left there. Raises MetricsDirError naming the fix."""
    p = Path(path).absolute()
    try:
        os.mkdir(p, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise MetricsDirError(f"cannot create the metrics directory {p} ({e.strerror}): give a directory this "
                              f"user may create (--metrics-dir)") from e
    st = os.lstat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise MetricsDirError(f"the metrics directory {p} is not a directory (a link or a file): remove it or "
                              f"give another --metrics-dir")
    if st.st_uid != os.getuid():
        raise MetricsDirError(f"the metrics directory {p} belongs to uid {st.st_uid}, not to the user the service "
                              f"runs as (uid {os.getuid()}): give a directory of its own (--metrics-dir)")
    if st.st_mode & 0o077:
        raise MetricsDirError(f"the metrics directory {p} is mode {stat.S_IMODE(st.st_mode):04o}: other users "
                              f"could change the service's metrics; chmod 700 {p}")
    for name in os.listdir(p):
        if _DB.match(name):
            try:
                os.unlink(p / name)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise MetricsDirError(f"cannot empty the metrics directory {p} ({e.strerror} on {name}): "
                                          f"delete its files by hand") from e
    return p


def enable(path: str | Path) -> None:
    """Switch this process (and those it forks) to multiprocess mode, writing to ``path``.
    Call it before the first metric is created."""
    os.environ[ENV] = str(path)
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        # imported before the variable was set: choose the value class again (no metric exists yet)
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]


def enabled() -> Optional[str]:
    """The metrics directory when this process runs in multiprocess mode, else None."""
    return os.environ.get(ENV) or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid was reused by another user's process: ours has exited
        return False
    return True


def _pids(path: str | Path, pattern: "re.Pattern[str]") -> set[int]:
    """The pids in the names of the files in ``path`` that ``pattern`` matches."""
    return {int(m.group(1)) for m in map(pattern.match, os.listdir(path)) if m}


def sweep_dead(path: str | Path) -> list[int]:
    """``mark_process_dead`` for each process with live-gauge files that has exited; the pids."""
    from prometheus_client import multiprocess

    dead = sorted(pid for pid in _pids(path, _LIVE_GAUGE) if not _alive(pid))
    for pid in dead:
        for _ in range(5):  # a process has one file per live mode at most (prometheus-client has 5)
            try:
                multiprocess.mark_process_dead(pid, str(path))
                break
            except FileNotFoundError:  # another process' scrape removed one at the same moment: the rest
                continue
    return dead


def live_pids(path: str | Path) -> list[int]:
    """The processes of the service that are running now (those with files in ``path``)."""
    return sorted(pid for pid in _pids(path, _DB) if _alive(pid))


class LiveProcessesCollector:
    """prometheus-client's ``process_*`` metrics of every live process of the service, each
    sample labelled with its ``pid`` (CPU and memory add up with ``sum``; a file limit does not)."""

    def __init__(self, path: str | Path):
        self.path = path

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client import ProcessCollector
        from prometheus_client.metrics_core import Metric

        fams: dict[str, Metric] = {}
        for pid in live_pids(self.path):
            for fam in ProcessCollector(pid=lambda p=pid: p, registry=None).collect():  # type: ignore[misc]
                out = fams.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                for s in fam.samples:
                    out.add_sample(s.name, dict(s.labels, pid=str(pid)), s.value)
        yield from fams.values()


_HEADER = 8  # bytes: the length of the used part of a metrics file, which its process writes first


def _has_header(name: str) -> bool:
    try:
        return os.stat(name).st_size >= _HEADER
    except FileNotFoundError:  # a dead process' live gauges, removed by another process' scrape
        return False


class FilesCollector:
    """prometheus-client's ``MultiProcessCollector`` over the files in ``path``, less the empty
    ones. A process creates its file empty and sizes it just after, so a scrape at that moment
    (the first request of a new process, or one that is restarted) would fail as a whole on it
    (prometheus/client_python#1199), and for good if the process was killed in between. An empty
    file holds no value yet; a file is never made smaller again, so one read as sized stays so."""

    def __init__(self, path: str | Path):
        self.path = path

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        files = [f for f in glob.glob(os.path.join(self.path, "*.db")) if _has_header(f)]
        return MultiProcessCollector.merge(files, accumulate=True)


def scrape_registry(path: str | Path) -> Any:
    """A registry that reads every process' files in ``path`` (after ``sweep_dead``), plus the
    live processes' ``process_*`` metrics; build one per scrape."""
    from prometheus_client import CollectorRegistry

    sweep_dead(path)  # OSError where the directory is gone
    r = CollectorRegistry()
    r.register(FilesCollector(path))
    r.register(LiveProcessesCollector(path))
    return r


class _Stopped(Exception):
    """The parent of the forked processes got SIGTERM or SIGINT."""


def remove_dir(path: str | Path) -> None:
    """Delete the metrics files (``*.db``) in ``path``, then ``path`` itself if nothing else is in it."""
    p = Path(path)
    try:
        for name in os.listdir(p):
            if _DB.match(name):
                os.unlink(p / name)
        os.rmdir(p)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove the metrics directory %s (%s): delete it by hand", p, e)


def _stop_children(grace_s: float) -> None:
    """SIGTERM to this process' children, SIGKILL to those still running after ``grace_s``;
    returns when all have ended (and are reaped)."""
    import psutil

    kids = psutil.Process().children()
    for k in kids:
        try:
            k.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(kids, timeout=grace_s)
    for k in alive:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def fork(n: int, remove: Optional[str | Path] = None, grace_s: float = 10.0) -> int:
    """tornado's ``fork_processes(n)``: returns the task id in each of the ``n`` forked
    processes; the parent stays here (restarting a process that dies) and exits when they all
    have, or with status 0 on SIGTERM or SIGINT after stopping them (SIGTERM, SIGKILL after
    ``grace_s``). With ``remove`` (the default directory, never one the admin named), the parent
    removes that directory as it exits, after its processes have ended."""
    from tornado import process

    parent = os.getpid()
    sigs = (signal.SIGTERM, signal.SIGINT)

    def stopped(signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != parent:  # a forked process before it restored the handlers: as before
            signal.signal(signum, old[signum])
            os.kill(os.getpid(), signum)
            return
        raise _Stopped(signum)

    old: dict[int, Any] = {s: signal.getsignal(s) for s in sigs}
    for s in sigs:
        signal.signal(s, stopped)
    try:
        task = process.fork_processes(n)
    except _Stopped as e:
        log.info("stopping the %d processes (signal %d)", n, e.args[0])
        for s in sigs:  # a second signal meanwhile does not interrupt the clean-up
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(0)
    finally:
        if os.getpid() == parent:  # also after tornado gave up restarting them
            _stop_children(grace_s)
            if remove is not None:
                remove_dir(remove)
    for s in sigs:
        signal.signal(s, old[s])
    return task
