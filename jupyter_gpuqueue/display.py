"""How a job shows in a cell. ``TextView`` prints (works in any frontend and in tests);
``jupyter_gpuqueue.widget.JobWidget`` (the ipywidgets job view) implements the same methods.

Which one a cell gets: ``GPUQUEUE_VIEW=text`` or ``widget`` forces it; the default (``auto``)
uses the widget when the cell was run by a frontend that renders widgets, and text otherwise (a
raw kernel client, nbconvert, a console). Signs of a widget frontend: the widget manager opened
the ``jupyter.widget.control`` comm (it does when it connects, if ipywidgets was imported);
the execute request carries JupyterLab's / Notebook 7's cell metadata (``deletedCells``,
``recordTiming``); or the kernel was started by VS Code itself (``VSCODE_PID`` without
``JPY_PARENT_PID``).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any, Optional, Protocol

from gpuqueue.queue.errors import GPUQueueError
from gpuqueue.queue.text import OutputLines, message_event_line, pending_text, state_event_line, waiting_line

VIEW_ENV = "GPUQUEUE_VIEW"


class JobView(Protocol):
    """What the magic calls while it follows a job."""

    def start(self, job: dict[str, Any]) -> None:
        """The job was submitted (or attached): show its id and state."""

    def event(self, ev: dict[str, Any]) -> None:
        """One event of the job's stream (log line, state change, metrics, ...)."""

    def finish(self, job: dict[str, Any]) -> None:
        """The job ended (or we stopped following it)."""


def start_line(job: dict[str, Any]) -> str:
    """``[gpuqueue] submitted j-… (name): queued (#2: …)`` for a job just submitted."""
    verb = "attached to" if job.get("attached") else "submitted"
    name = f" ({job['spec']['name']})" if job.get("spec", {}).get("name") else ""
    line = f"[gpuqueue] {verb} {job['id']}{name}: {job['state']}"
    pending = job.get("pending")
    if pending and job["state"] in ("queued", "retrying"):
        line += f" ({pending_text(pending)})"
    return line


WHY_WAIT_S = 3.0
"""How long a text cell asks for the place in line of a job its cluster has not placed yet."""


def say_why_it_waits(client: Any, job: dict[str, Any]) -> None:
    """In text, say once where a job waits and why (``[gpuqueue] j-…: queued (#2: …)``). A
    cluster's API answers a submit before its scheduler has placed the job (no place in line
    yet), so ``client`` is asked again for a moment (the widget asks every few seconds); the
    job's events are replayed from the start after."""
    deadline = time.monotonic() + WHY_WAIT_S
    while job["state"] in ("queued", "retrying") and not (job.get("pending") or {}).get("position") \
            and time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            job = client.get(job["id"])
        except GPUQueueError:
            return
        if (job.get("pending") or {}).get("position") and (said := waiting_line(job)) is not None:
            print(said, flush=True)


class TextView:
    """Plain text: a state line per change, log lines as they arrive. Only the lines that stay
    are printed: a progress bar's redraws (``transient`` records) are not, its last state is,
    once the job ends its line (the runner marks which is which). They are not drawn in place:
    a frontend shows a cell's stdout and stderr as separate blocks, so a redraw cut by a line
    on the other stream (another rank's, a state line) would stay on screen; the widget and
    ``gpuqueue logs -f`` on a terminal draw them."""

    def __init__(self, out: Any = None, err: Any = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.lines = OutputLines()

    def start(self, job: dict[str, Any]) -> None:
        print(start_line(job), file=self.out, flush=True)

    def _print_log(self, d: dict[str, Any]) -> None:
        print(d.get("line", ""), file=self.err if d.get("stream") == "stderr" else self.out, flush=True)

    def _print(self, line: str) -> None:
        """A line of the view's own (an old runner's bar, held, is printed above it)."""
        for held in self.lines.end():
            self._print_log(held)
        print(line, file=self.out, flush=True)

    def event(self, ev: dict[str, Any]) -> None:
        d = ev.get("data", {})
        t = ev.get("type")
        if t == "log":
            for final in self.lines.feed(d)[0]:
                self._print_log(final)
        elif t == "state":
            line = state_event_line(d)
            if line:
                self._print(line)
        elif (said := message_event_line(t, d)) is not None:
            self._print(said)
        elif t == "checkpoint":
            self._print(f"[gpuqueue] checkpoint saved: step {d.get('step')} -> {d.get('path')}")

    def finish(self, job: dict[str, Any]) -> None:
        for held in self.lines.end():
            self._print_log(held)


def view_mode() -> str:
    """``text``, ``widget`` or ``auto`` (from ``GPUQUEUE_VIEW``, read at each use)."""
    mode = os.environ.get(VIEW_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "text", "widget"):
        print(
            f"[gpuqueue] warning: {VIEW_ENV}={mode!r} is not text, widget or auto; using auto",
            file=sys.stderr,
        )
        mode = "auto"
    return mode


def widget_frontend_connected() -> bool:
    """True when a frontend that renders ipywidgets is connected to this kernel.

    Widget managers (JupyterLab, Notebook 7, VS Code) open the ``jupyter.widget.control``
    comm when they connect to a kernel; ipywidgets keeps it on ``Widget._control_comm``."""
    try:
        from ipywidgets import Widget
    except ImportError:
        return False
    return getattr(Widget, "_control_comm", None) is not None


def request_from_widget_frontend(metadata: Optional[dict[str, Any]]) -> bool:
    """True when an execute request's metadata says JupyterLab or Notebook 7 sent it."""
    return bool(metadata) and ("deletedCells" in metadata or "recordTiming" in metadata)  # type: ignore[operator]


def use_widgets(request_metadata: Optional[dict[str, Any]] = None) -> bool:
    """Whether the next job view should be the widget (see the module's docstring)."""
    mode = view_mode()
    if mode == "text":
        return False
    try:
        importlib.import_module("ipywidgets")  # the widget needs it
    except ImportError:
        return False
    return (
        mode == "widget"
        or widget_frontend_connected()
        or request_from_widget_frontend(request_metadata)
        or ("VSCODE_PID" in os.environ and "JPY_PARENT_PID" not in os.environ)  # VS Code's own kernel
    )
