"""A condition that comes again and again in a cluster process's loop (the store unavailable,
a password Redis refuses): each distinct message is logged once, then how often it came, instead
of the same line every second. Used by the worker's tail loop (``worker_tail.py``) and the
scheduler daemon's wait for the leader lock (``leadership.py``)."""

from __future__ import annotations

import logging
import time
from typing import Optional


class Repeats:
    """One condition logged once per distinct message, then how often it came again: when the
    message changes or the condition is over, and, with ``every_s``, also while it lasts, at a
    growing interval (``every_s``, then doubled each time up to ``max_every_s``)."""

    def __init__(self, log: logging.Logger, every_s: Optional[float] = None, max_every_s: float = 600.0) -> None:
        self.log = log
        self.text = ""
        self.count = 0  # how often the current message came (0: the condition is over)
        self.every_s = every_s
        self.max_every_s = max_every_s
        self._first = 0.0  # monotonic time the current message first came
        self._interval = 0.0
        self._next = 0.0  # when its count is logged next
        self._counted = 0  # its count when last logged
        self._level = logging.WARNING

    def seen(self, text: str, level: int = logging.WARNING) -> None:
        """The condition came (again), saying ``text``: logged at ``level`` if it is new."""
        now = time.monotonic()
        if text != self.text:
            if self.count > 1:
                self.log.warning("(the message before came %d more times)", self.count - 1)
            self.log.log(level, "%s", text)
            self.text, self.count, self._counted, self._level = text, 0, 1, level
            self._first = now
            if self.every_s:
                self._interval, self._next = self.every_s, now + self.every_s
        self.count += 1
        if self.every_s and now >= self._next and self.count > self._counted:
            self.log.log(self._level, "(the message above came %d more times in the last %.0f s, %d in all; "
                         "still going on)", self.count - self._counted, now - (self._next - self._interval),
                         self.count)
            self._counted = self.count
            self._interval = min(self._interval * 2, self.max_every_s)
            self._next = now + self._interval

    def over(self, text: str) -> None:
        """The condition is over: ``text`` logged (with how often it came), if it had come."""
        if self.count:
            self.log.info("%s (after %d failed tries)", text, self.count)
            self.text, self.count = "", 0
