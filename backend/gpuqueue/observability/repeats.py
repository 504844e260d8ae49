"""A condition that comes again and again in a loop (the store unavailable, a password Redis
refuses, a tail round that raises): each distinct message is logged once, then how often it came,
instead of the same line every round; and the wait before the next try grows while it lasts.
The one place for this pattern: the cluster worker's heartbeat and tail loops (``worker.py``,
``worker_tail.py``), the scheduler daemon's wait for the leader lock (``leadership.py``) and the
embedded server's tail loop (``embedded/tailing.py``)."""

from __future__ import annotations

import logging
import time
from typing import Optional

BEFORE = "(the message before came %d more times)"
AFTER = " (after {rounds} failed tries)"


class Repeats:
    """One condition logged once per distinct message, then how often it came again: when the
    message changes or the condition is over, and, with ``every_s``, also while it lasts, at a
    growing interval (``every_s``, then doubled each time up to ``max_every_s``). ``before`` is
    the line (a %-format taking the count) that says how often the message before came."""

    def __init__(self, log: logging.Logger, every_s: Optional[float] = None, max_every_s: float = 600.0,
                 before: str = BEFORE) -> None:
        self.log = log
        self.before = before
        self.text = ""  # the message last logged ("": the condition is over)
        self.count = 0  # how often the current message came (0: the condition is over)
        self.rounds = 0  # how often the condition came in a row, whatever its message
        self.since = 0.0  # monotonic time the condition began
        self.every_s = every_s
        self.max_every_s = max_every_s
        self._interval = 0.0
        self._next = 0.0  # when its count is logged next
        self._counted = 0  # its count when last logged
        self._level = logging.WARNING

    @property
    def again(self) -> int:
        """How often the current message came again after it was logged."""
        return max(self.count - 1, 0)

    def seen(self, text: str, level: int = logging.WARNING, line: Optional[str] = None,
             exc_info: Optional[BaseException] = None) -> None:
        """The condition came (again), saying ``text``: if that is new, ``line`` (default:
        ``text``) is logged at ``level``, with ``exc_info``'s traceback if given."""
        now = time.monotonic()
        if not self.rounds:
            self.since = now
        self.rounds += 1
        if text != self.text:
            if self.count > 1:
                self.log.warning(self.before, self.count - 1)
            self.log.log(level, "%s", text if line is None else line, exc_info=exc_info)
            self.text, self.count, self._counted, self._level = text, 0, 1, level
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

    def told(self) -> None:
        """How often the current message came was said elsewhere: later counts start from here."""
        self.count = self._counted = min(self.count, 1)

    def backoff(self, first_s: float, max_s: float) -> float:
        """The seconds to wait before the next try: ``first_s`` after the first failure, doubled
        at each one in a row, up to ``max_s``."""
        return min(first_s * 2 ** min(max(self.rounds - 1, 0), 16), max_s)

    def over(self, text: str, after: str = AFTER) -> bool:
        """The condition is over: ``text`` logged, followed by ``after`` (its ``{rounds}``,
        ``{seconds}`` and ``{last}`` filled in: the failures in a row, the seconds they took, the
        last message), if it had come. Whether it had."""
        if not self.rounds:
            return False
        said = after.format(rounds=self.rounds, seconds=time.monotonic() - self.since, last=self.text)
        self.log.info("%s%s", text, said)
        self.text, self.count, self.rounds = "", 0, 0
        return True
