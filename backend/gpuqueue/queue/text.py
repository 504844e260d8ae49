"""Text users see: control characters (refused in names by the request models, escaped in what a
terminal shows), a job's output lines, and the line a ``state``, ``warning`` or ``info`` event
reads as (the same in a notebook cell, its widget and ``gpuqueue logs``)."""

from __future__ import annotations

import re
from typing import Any, Optional

from .durations import format_duration

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")
"""C0 controls (NUL, BEL, BS, TAB, LF, CR, ESC, ...), DEL and the C1 controls (CSI, ...); the
Unicode line and paragraph separators (U+2028, U+2029: line breaks to ``str.splitlines``, to
JavaScript before ES2019 and to many log viewers); and the bidirectional formatting characters
(U+200E, U+200F, U+202A-U+202E, U+2066-U+2069), with which a name would show the rest of its
line reversed in an admin's listing (another owner, another state)."""


def count(n: int, noun: str) -> str:
    """``n`` and ``noun`` in words: ``1 GPU``, ``2 GPUs``, ``0 jobs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def printable(text: Any) -> str:
    """``text`` safe to print in a terminal: each control character (ESC, CR, BEL, ...) shown as
    a ``\\x1b``-style escape, so that a job name cannot rewrite an admin's screen."""
    return CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], str(text))


_IN_OUTPUT = re.compile(r"(\x1b\[[0-9;:]*m)|(?![\t\n])" + CONTROL_CHARS.pattern)


def terminal_output(text: Any) -> str:
    """A job's output (a log line, a traceback) safe to print in a terminal that may be another
    user's (an admin's ``gpuqueue logs ID``): colours (SGR, ``ESC[...m``), tabs and newlines are
    kept, every other control character is escaped as :func:`printable` does, so that no line
    sets the terminal's clipboard (OSC 52) or title, or moves the cursor over what was shown."""
    return _IN_OUTPUT.sub(lambda m: m.group(1) or repr(m.group())[1:-1], str(text))


class OutputLines:
    """A job's ``log`` records as its output: the lines that stay, and the line being written.

    The runner marks each record (``gpuqueue.attempt.output.OutputPump``): a *final* line stays;
    a *transient* one (``"transient": true``: a progress bar's redraw, a line before its
    ``\\n``) is shown in place until the next record of the job's output replaces it, and is
    never printed for good. Records of runners before that flag carry ``"replace": true`` on
    each state of a ``\\r`` line instead, the last one included: such a record is shown in place
    and stays once any other record comes (as a terminal shows a bar when the job moves on).

    :meth:`feed` returns, for one record, the records to print for good now (in order) and the
    one to show in place (or None); :meth:`end` what is still held when the output ends."""

    def __init__(self) -> None:
        self.held: Any = None  # an old runner's \r line, final once anything else comes

    def feed(self, data: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
        """(final records to print now, the transient record to show in place or None)."""
        if data.get("transient"):
            return [], data
        if data.get("replace"):
            self.held = data  # the line's newer state
            return [], data
        return self.end() + [data], None

    def end(self) -> list[dict[str, Any]]:
        """The held record of an old runner's ``\\r`` line (a one-item list; empty if none)."""
        held, self.held = self.held, None
        return [held] if held is not None else []


PREEMPT_IS_FOR_ADMINS = ("only admins may preempt jobs; to stop a job of yours, cancel it (`%gpuqueue cancel ID` "
                         "or `gpuqueue cancel ID`), then submit it again with --resume-from its last checkpoint "
                         "(`%gpuqueue checkpoints ID` lists them)")
"""What a user who is not an admin is told when they try to preempt a job (embedded and cluster)."""


def message_event_line(type_: Any, d: dict[str, Any]) -> Optional[str]:
    """The text line for a ``warning`` or ``info`` event (``[gpuqueue] warning: ...``), as the
    notebook cell, its widget and ``gpuqueue logs`` all show it; None for another event, or one
    with no message (a failing cell's error record: its state line says the error)."""
    if type_ in ("warning", "info") and d.get("message"):
        return f"[gpuqueue] {type_}: {d['message']}"
    return None


def pending_text(p: dict[str, Any]) -> str:
    """Where a waiting job stands and why, in words: ``#2, ETA 4m10s: waiting for 1 GPU in pool
    'default' (0/1 free)`` (a job's ``pending``), as ``gpuqueue ls``, ``gpuqueue logs`` and the
    magic's ``list``, ``status`` and dashboard say it; the ``reason`` code only if it has no message.
    Without a place (``position`` 0), the words alone: ``waiting for the next scheduling pass``."""
    eta = f", ETA {format_duration(p['eta_s'])}" if p.get("eta_s") is not None else ""
    why = p.get("message") or p.get("reason")
    # no place yet (0: a cluster's scheduler has not placed the job since it came): the words alone
    return f"#{p['position']}{eta}: {why}" if p.get("position") else f"{why}{eta}"


def waiting_line(job: dict[str, Any]) -> Optional[str]:
    """``[gpuqueue] j-…: queued (#1: waiting for ...)`` for a job that waits and whose place the
    scheduler has given (``pending``); None otherwise. A notebook cell's text and ``gpuqueue logs``
    say it before the job's output, which it has none of yet."""
    if job.get("state") not in ("queued", "retrying") or not job.get("pending"):
        return None
    return f"[gpuqueue] {job['id']}: {job['state']} ({pending_text(job['pending'])})"


def state_event_line(d: dict[str, Any]) -> Optional[str]:
    """The text line for a ``state`` event, or None when it says nothing new. A job asked to
    stop (time limit, cancel, preemption) has a ``stopping`` event with no ``state``."""
    state = d.get("state")
    if state is None:
        if d.get("stopping"):
            grace = d.get("grace_s")
            then = f"; it has {grace:g}s to save a checkpoint, then it is killed" if grace else ""
            return f"[gpuqueue] stopping ({str(d['stopping']).replace('_', ' ')}){then}"
        return None
    if state == "starting":
        gpus = d.get("gpus") or []
        where = f" on {d.get('node')}" + (f" GPUs {gpus}" if gpus else " (CPU)")
        return f"[gpuqueue] starting attempt {d.get('attempt')}{where}"
    if state in ("queued", "retrying") and d.get("after"):  # an attempt ended: which, how and why
        again = "queued again" if state == "queued" else "will retry"
        which = f" {d['attempt']}" if d.get("attempt") else ""
        why = f": {d['why']}" if d.get("why") else ""
        return f"[gpuqueue] attempt{which} ended ({d['after']}{why}); {again}"
    if state not in ("queued", "starting"):
        return f"[gpuqueue] {state.replace('_', ' ')}"  # 'timed out', as the sidebar says it
    return None
