"""Seeing at once that a node's Ray died at start, instead of when ``ray start`` gives up.

Ray's raylet waits at most 15 s for its dashboard agent and dies when the agent is late, as it
is on a loaded node (``raynodes.RESTART_NOTE``). ``ray start`` does not notice: it goes on asking
the GCS for its node for 30 s more (Ray 2.60, ``ray._private.node``), and a driver connecting to
that node waits for it up to Ray's 60 s GCS timeout. The job's Ray is started again once ``ray
start`` exits (the head by the launcher, a join by its worker), so each such restart cost the job
about a minute. A :class:`RayletWatch` tells, from the process tree of a ``ray start``, that its
raylet is gone (ended, or a zombie that ``ray start`` has not reaped), and
:func:`end_when_raylet_ends` ends that ``ray start``'s process group then, so that it is started
again at once.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Optional

RAYLET = "raylet"  # the raylet's process name (its executable: ray/core/src/ray/raylet/raylet)


class RayletWatch:
    """The raylet under one ``ray start`` process: :meth:`ended` is true once one was seen
    running there and none runs any longer."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seen = False

    def ended(self) -> bool:
        """Whether the raylet this ``ray start`` started has ended: False until one was seen,
        and where the ``ray start`` itself is gone (its exit says what happened) or the Python
        that asks has no ``psutil`` (then ``ray start``'s own exit is waited for)."""
        try:
            import psutil
        except ImportError:
            return False
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return False
        for p in children:
            try:
                if p.name() == RAYLET and p.status() != psutil.STATUS_ZOMBIE:
                    self.seen = True
                    return False
            except psutil.Error:
                continue
        return self.seen


def end_when_raylet_ends(start: Any, on_end: Optional[Callable[[], None]] = None,
                         every_s: float = 0.5) -> threading.Event:
    """In a daemon thread, until ``start`` (the ``subprocess.Popen`` of a ``ray start`` in a
    session of its own) exits or the returned event is set (the node is up: no need to look at
    every process of the node twice a second any longer): once its raylet ended, call ``on_end``
    and kill its process group, so that ``start`` exits (by SIGKILL) and its caller starts it
    again."""
    done = threading.Event()

    def watch() -> None:
        raylet = RayletWatch(start.pid)
        while start.poll() is None and not done.wait(every_s):
            if raylet.ended():
                if on_end is not None:
                    on_end()
                try:
                    os.killpg(start.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                return

    threading.Thread(target=watch, name=f"raylet-watch-{start.pid}", daemon=True).start()
    return done
