"""One attempt's checkpoint uploads to the shared root, off the worker's event thread.

The worker's tail thread copies every running attempt's events to the store every 20 ms; an
upload to a slow store (a big checkpoint to S3) on that thread would hold back the live logs and
progress of every job on the node. So each attempt with a shared root gets an
:class:`AttemptUploads`: its own thread, started at the first request, which runs the pushes.

* :meth:`AttemptUploads.request` (a ``checkpoint`` event) asks for a push; requests made while
  one waits or runs are coalesced into one more push after it.
* :meth:`AttemptUploads.finish` (the attempt ended) asks for the final push, run after any push in
  progress; the tail thread asks again each round and reports the end only once it is done, with
  the exit record the push returned (a storage error fails the attempt there, as before).
* What the pushes tell the job's stream (a copy made, a storage error) is kept as store ops that
  the tail thread writes with the attempt's next events (:meth:`AttemptUploads.take_ops`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from .redis_store import Op

log = logging.getLogger("gpuqueue.worker")

ExitRec = dict[str, Any]
Push = Callable[[Optional[ExitRec], list[Op]], Optional[ExitRec]]


class AttemptUploads:
    """The pushes of one attempt. ``push(exit_rec, ops)`` copies the attempt's checkpoints,
    appends what to tell to ``ops`` and returns the exit record (``None`` mid-run); ``wake``
    wakes the tail thread when there is something to write."""

    def __init__(self, name: str, push: Push, wake: Callable[[], None]):
        self.name = name
        self._push = push
        self._wake = wake
        self._cond = threading.Condition()
        self._wanted = False
        self._final: Optional[ExitRec] = None  # the exit record waiting for the final push
        self._result: Optional[ExitRec] = None  # what the final push returned
        self._done = False
        self._closed = False
        self._ops: list[Op] = []
        self._thread: Optional[threading.Thread] = None

    def request(self) -> None:
        """Ask for a push (coalesced with any not started yet)."""
        with self._cond:
            self._wanted = True
            self._start()
            self._cond.notify()

    def finish(self, exit_rec: ExitRec) -> Optional[ExitRec]:
        """Ask for the final push with the attempt's exit record; the exit record to report once
        it is done, else None (ask again later)."""
        with self._cond:
            if self._done:
                return self._result
            if self._final is None:
                self._final = exit_rec
                self._start()
                self._cond.notify()
            return None

    def take_ops(self) -> list[Op]:
        """The store ops the pushes made since the last call (events for the job's stream)."""
        with self._cond:
            ops, self._ops = self._ops, []
        return ops

    def give_back(self, ops: list[Op]) -> None:
        """Ops taken but not written (the store was unavailable): written with the next ones."""
        with self._cond:
            self._ops[:0] = ops

    def close(self) -> None:
        """Stop after the push in progress (an attempt forgotten without its end reported)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"uploads-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._wanted or self._final is not None or self._closed):
                    self._cond.wait()
                if self._closed:
                    return
                final = self._final
                self._wanted = False
            ops: list[Op] = []
            try:
                rec = self._push(final, ops)
            except Exception:  # noqa: BLE001 - the push turns storage errors into records itself
                log.exception("uploading %s's checkpoints failed", self.name)
                rec = final
            with self._cond:
                self._ops += ops
                if final is not None:
                    self._result, self._done = rec, True
            self._wake()
            if final is not None:
                return
