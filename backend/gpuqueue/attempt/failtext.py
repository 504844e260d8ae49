"""How a process that failed reads to a user: its exit in words and the last lines it wrote on
stderr (the exception line of a Python traceback first of all).

One place for it, used by the runner (the tail of a job's stderr, in ``exit.json``), the
multi-rank launchers (a failing rank, :mod:`gpuqueue.job.distributed`) and settling (the job's
error, :func:`gpuqueue.queue.lifecycle.settle`). What is kept is bounded (:data:`TAIL_LINES`
lines, :data:`TAIL_CHARS` characters) and what goes into a one-line error has its control
characters escaped (:func:`gpuqueue.queue.text.printable`).
"""

from __future__ import annotations

import re
import signal
from collections import deque
from typing import Any, Iterable, Optional

from ..queue.text import printable, terminal_output

TAIL_LINES = 8  # of a failed process's stderr kept for its error
TAIL_CHARS = 4000  # ... and at most this many characters of them
LINE_CHARS = 1000  # of one line

# "ValueError: text", "torch.OutOfMemoryError: ...", "KeyboardInterrupt" at the start of a line
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Stopped|Warning)(?::\s.*)?$", re.S)
_TRACEBACK_HEAD = "Traceback (most recent call last):"
_HINTS = {signal.SIGKILL: "e.g. the kernel's out-of-memory killer"}


class StderrTail:
    """The last lines a process wrote on stderr that are not blank, within the bounds above."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque()
        self._chars = 0

    def add(self, line: str) -> None:
        """Keep ``line`` (the oldest lines go past the bounds)."""
        line = line.rstrip()
        if not line.strip():
            return
        if len(line) > LINE_CHARS:
            line = line[:LINE_CHARS] + " …[cut]"
        self._lines.append(line)
        self._chars += len(line)
        while len(self._lines) > TAIL_LINES or (self._chars > TAIL_CHARS and len(self._lines) > 1):
            self._chars -= len(self._lines.popleft())

    def lines(self) -> list[str]:
        """The lines kept, oldest first."""
        return list(self._lines)


def clean_tail(raw: Any) -> list[str]:
    """A tail as read back from a record the job may have written (``exit.json`` where the job
    runs as the queue's own user): strings only, within the bounds."""
    tail = StderrTail()
    for line in raw if isinstance(raw, list) else []:
        if isinstance(line, str):
            tail.add(line)
    return tail.lines()


def exit_words(code: int) -> str:
    """How a process ended, from its exit status (negative: the signal that killed it):
    ``exit code 3``, ``killed by signal 9 (SIGKILL), e.g. the kernel's out-of-memory killer``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        sig = signal.Signals(-code)
    except ValueError:
        return f"killed by signal {-code}"
    hint = _HINTS.get(sig)
    return f"killed by signal {-code} ({sig.name})" + (f", {hint}" if hint else "")


def why_line(lines: Iterable[str]) -> Optional[str]:
    """The line that says why: the exception line of the last Python traceback in ``lines``
    (the first line after it that is not indented), else the last line that reads as an
    exception, else the last line; None when there is none."""
    kept = [line for line in lines if line.strip()]
    if not kept:
        return None
    heads = [i for i, line in enumerate(kept) if line.strip() == _TRACEBACK_HEAD]
    if heads:
        after = kept[heads[-1] + 1 :]
        found = next((line for line in after if not line[:1].isspace()), None)
        if found is not None:
            return found.strip()
    found = next((line for line in reversed(kept) if EXCEPTION_LINE.match(line.strip())), None)
    return (found or kept[-1]).strip()


def rank_error(code: int, lines: Iterable[str]) -> str:
    """What a failed rank's error says (after ``rank N failed: ``): ``ValueError: text (exit
    code 1)``, ``exit code 3`` when it wrote nothing on stderr, ``killed by signal 9 (SIGKILL),
    ...; its last line on stderr: ...``. Control characters are escaped."""
    why = why_line(lines)
    if why is None:
        return exit_words(code)
    if code < 0:
        return f"{exit_words(code)}; its last line on stderr: {printable(why)}"
    return f"{printable(why)} ({exit_words(code)})"


def process_error(code: int, lines: Iterable[str]) -> str:
    """The error of a job whose process failed without an error record of its own (a command
    job): ``the job process exited with code 1: ValueError: text``, or ``the job process was
    killed by signal 9 (SIGKILL), ...``, with its last line on stderr if it wrote one."""
    why = why_line(lines)
    if code < 0:
        text = f"the job process was {exit_words(code)}"
        return text + (f"; its last line on stderr: {printable(why)}" if why else "")
    return f"the job process exited with code {code}" + (f": {printable(why)}" if why else "")


def tail_text(lines: Iterable[str]) -> Optional[str]:
    """The lines kept, as the traceback a job's record shows (``gpuqueue show``; terminal
    escapes other than colours escaped, as in the job's log); None when there are none."""
    kept = [terminal_output(line) for line in lines]
    return "\n".join(["last lines on stderr:", *kept]) if kept else None
