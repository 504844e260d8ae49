"""The job widget a ``%%train`` cell shows: state line, progress bar, live loss curve, log tail,
checkpoints, Cancel / Detach.

Cancel asks for a second click within ``CONFIRM_S`` seconds, then cancels the job; Detach stops
following it (the job goes on). Both work while a foreground cell waits: the magic waits in a
``commwait.CommWaiter``, which lets the kernel handle the clicks meanwhile (where a kernel cannot,
the buttons stay off until the wait ends and say why).

Events arrive on a follower thread (``event``) and only change plain Python state under a
lock; a ticker thread copies that state into the widget models at most ``REDRAW_HZ`` times a
second (ipykernel 7 sends widget state from any thread; nothing here prints from a thread). A
job logging thousands of lines a second therefore costs the frontend a few small updates a
second. The log tail keeps the last ``LOG_LINES`` lines; the curve keeps a bounded, evenly
thinned series.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from typing import Any, Callable, Optional

import ipywidgets as W

from gpuqueue.queue.ckptref import entry_lines, listing, rotated_note, with_nodes
from gpuqueue.queue.states import STATE_GROUPS
from gpuqueue.queue.text import OutputLines, count, message_event_line, state_event_line


REDRAW_HZ = 4.0
LOG_LINES = 400
CURVE_POINTS = 2000  # kept; thinned by 2 when full
CURVE_DRAWN = 300  # drawn
PENDING_REFRESH_S = 3.0
CONFIRM_S = 5.0  # how long a first click on Cancel waits for the second
TERMINAL = set(STATE_GROUPS["terminal"])
WAITING = set(STATE_GROUPS["waiting"])
CURVE_KEYS = ("loss", "train_loss", "eval_loss")


def fmt_duration(seconds: Optional[float]) -> str:
    """``1h02m``, ``3m05s``, ``42s``."""
    if seconds is None:
        return "?"
    s = max(0, int(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def svg_curve(points: list[tuple[float, float]], label: str, width: int = 420, height: int = 130) -> str:
    """An inline SVG line chart of ``points`` (step, value): cheap to send, renders anywhere."""
    if not points:
        return ""
    if len(points) > CURVE_DRAWN:
        stride = len(points) / CURVE_DRAWN
        pts = [points[int(i * stride)] for i in range(CURVE_DRAWN)] + [points[-1]]
    else:
        pts = points
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    dx = (x1 - x0) or 1.0
    dy = (y1 - y0) or 1.0
    pad_l, pad_r, pad_t, pad_b = 46, 8, 8, 18
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    coords = " ".join(
        f"{pad_l + (x - x0) / dx * w:.1f},{pad_t + (1 - (y - y0) / dy) * h:.1f}" for x, y in pts
    )
    last = points[-1]
    return (
        f'<svg class="gpuqueue-curve" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{html.escape(label)} curve">'
        f'<rect x="{pad_l}" y="{pad_t}" width="{w}" height="{h}" fill="none" stroke="#ccc"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 9}" font-size="10" text-anchor="end">{y1:.4g}</text>'
        f'<text x="{pad_l - 4}" y="{pad_t + h}" font-size="10" text-anchor="end">{y0:.4g}</text>'
        f'<text x="{pad_l}" y="{height - 4}" font-size="10">step {x0:g}</text>'
        f'<text x="{width - pad_r}" y="{height - 4}" font-size="10" text-anchor="end">'
        f"{html.escape(label)} {last[1]:.4g} @ step {last[0]:g}</text>"
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/></svg>'
    )


class _JobBox(W.VBox):
    """The widget's root; its plain-text form (static renderers) is the state line."""

    view: Optional["JobWidget"] = None

    def __repr__(self) -> str:
        return self.view.text_summary() if self.view else "gpuqueue job"


class JobWidget:
    """An ipywidgets view of one job; implements ``display.JobView``.

    ``cancel(job_id)`` is called by the Cancel button; ``detach()`` by Detach (the magic stops
    following). ``refresh(job_id)`` returns the job record (for a queued job's position/ETA).
    """

    def __init__(
        self,
        cancel: Optional[Callable[[str], Any]] = None,
        detach: Optional[Callable[[], None]] = None,
        refresh: Optional[Callable[[str], dict[str, Any]]] = None,
        show: bool = True,
        foreground: bool = False,
        buttons_live: bool = True,
    ):
        self._cancel_fn = cancel
        self._detach_fn = detach
        self._refresh_fn = refresh
        self._show = show
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._dirty = threading.Event()
        self._closed = threading.Event()
        # state (guarded by _lock)
        self.job: dict[str, Any] = {}
        self.state = "?"
        self.pending: Optional[dict[str, Any]] = None
        self.node: Optional[str] = None
        self.gpus: list[int] = []
        self.attempt: Optional[int] = None
        self.started: Optional[float] = None
        self.ended: Optional[float] = None
        self.done: Optional[float] = None
        self.total: Optional[float] = None
        self.curve_key: Optional[str] = None
        self.points: list[tuple[float, float]] = []
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.lines_total = 0
        self.output = OutputLines()
        self.live_line = ""  # the line the job is writing (a tqdm bar's latest redraw), shown last
        self.checkpoints: list[dict[str, Any]] = []  # their events' data, with the node that saved each
        self.checkpoints_node: Optional[str] = None  # where the newest attempt runs
        self.note = ""
        self.last_seq = 0
        self.redraws = 0
        self._last_refresh = 0.0
        self.cancel_requested = False  # the Cancel button asked the server to cancel the job
        self._confirm_until = 0.0  # a first click arms Cancel until then; a second one cancels
        # widgets
        self.title = W.HTML()
        self.status = W.HTML()
        self.progress = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                        layout=W.Layout(width="320px", visibility="hidden"))
        self.progress_text = W.HTML()
        self.curve = W.HTML(layout=W.Layout(display="none"))
        self.log = W.HTML()
        # a column-reverse box stays scrolled to its newest line, as a tail should
        self.log_scroll = W.Box([self.log], layout=W.Layout(
            display="flex", flex_flow="column-reverse", max_height="16em", overflow="auto"))
        self.log_box = W.Accordion(children=[self.log_scroll], titles=("Log",), selected_index=0)
        self.ckpts = W.HTML(layout=W.Layout(display="none"))
        self.cancel_button = W.Button(description="Cancel", button_style="danger", icon="stop",
                                      tooltip="cancel the job (it stops after its grace period)")
        self.detach_button = W.Button(description="Detach", icon="unlink",
                                      tooltip="stop watching; the job goes on")
        self.cancel_button.on_click(lambda _b: self.request_cancel())
        self.detach_button.on_click(lambda _b: self.request_detach())
        # The buttons come first: what is below them grows as the job runs (the log tail, a
        # line at a time up to its height, then the curve and the checkpoints), and buttons
        # below it moved down every redraw, so a click whose press and release straddled one
        # (a slow machine, a slow hand) reached no button and was lost without a word.
        self.root = _JobBox(
            children=[
                W.HBox([self.cancel_button, self.detach_button]),
                W.HBox([self.title, self.status]),
                W.HBox([self.progress, self.progress_text]),
                self.curve,
                self.log_box,
                self.ckpts,
            ],
            layout=W.Layout(border="1px solid #ddd", padding="4px 8px"),
        )
        if foreground and not buttons_live:
            # this kernel cannot take the clicks while the cell waits (see commwait.py)
            busy = "the kernel is busy waiting for this job: Kernel > Interrupt stops waiting " \
                   "(the job goes on); the GPU Queue sidebar cancels at any time"
            for b in (self.cancel_button, self.detach_button):
                b.disabled, b.tooltip = True, busy
        self.root.add_class("gpuqueue-job")
        self.root.view = self
        self._ticker = threading.Thread(target=self._tick_loop, name="gpuqueue-widget", daemon=True)

    # -- JobView --------------------------------------------------------------------------
    def start(self, job: dict[str, Any]) -> None:
        """Show the widget for a submitted or attached job."""
        with self._lock:
            self.job = job
            self.state = job["state"]
            self.pending = job.get("pending")
            attempt = (job.get("attempts") or [None])[-1]
            if attempt:
                self.node = attempt.get("node")
                self.gpus = attempt.get("gpu_ids") or []
                self.attempt = attempt.get("number")
                self.started = attempt.get("started_at")
            self.note = "attached" if job.get("attached") else ""
        self._flush()
        if self._show:
            from IPython.display import display

            display(self.root)
        self._ticker.start()

    def event(self, ev: dict[str, Any]) -> None:
        """Fold one event into the view's state (cheap; drawn by the ticker)."""
        d = ev.get("data") or {}
        t = ev.get("type")
        with self._lock:
            self.last_seq = max(self.last_seq, int(ev.get("seq") or 0))
            if t == "log":
                done, now = self.output.feed(d)  # the lines that stay; the one being written
                for final in done:
                    self.log_lines.append(str(final.get("line", "")))
                    self.lines_total += 1
                self.live_line = str(now.get("line", "")) if now is not None else ""
            elif t == "progress":
                self.done, self.total = d.get("done"), d.get("total")
            elif t == "metrics":
                self._add_metrics(d)
            elif t == "state":
                self._add_state(d, ev.get("time"))
                self.checkpoints_node = with_nodes([ev], self.checkpoints_node)[1]
            elif t == "checkpoint":
                self.checkpoints += with_nodes([ev], self.checkpoints_node)[0]
            elif (said := message_event_line(t, d)) is not None:  # a failing cell's error info: the status shows it
                self.log_lines.append(said)
                self.lines_total += 1
        self._dirty.set()

    def finish(self, job: dict[str, Any]) -> None:
        """The job ended (or we stopped following): final state, buttons off."""
        with self._lock:
            self.job = job
            self.state = job["state"]
            self.pending = job.get("pending")
            if job["state"] in TERMINAL:
                attempt = (job.get("attempts") or [None])[-1]
                self.ended = (attempt or {}).get("ended_at") or time.time()
                if job["state"] == "succeeded" and self.total:
                    self.done = self.total
        self.close_updates()

    # -- buttons --------------------------------------------------------------------------
    def request_cancel(self, confirmed: bool = False) -> None:
        """The Cancel button. A first click arms it ("Confirm cancel" for ``CONFIRM_S``
        seconds); a second one asks the server to cancel the job (``confirmed`` skips the
        first step). Any thread: the kernel may run it while the cell waits."""
        job_id = self.job.get("id")
        if not job_id or self._cancel_fn is None or self.state in TERMINAL:
            return
        now = time.monotonic()
        if not confirmed and now > self._confirm_until:
            self._confirm_until = now + CONFIRM_S
            with self._flush_lock:
                self.cancel_button.description = "Confirm cancel"
                self.cancel_button.tooltip = f"click again within {CONFIRM_S:.0f} s to cancel {job_id}"
            disarm = threading.Timer(CONFIRM_S, self._disarm_cancel)
            disarm.daemon = True
            disarm.start()
            return
        self._confirm_until = 0.0
        try:
            self._cancel_fn(job_id)
            note = "cancelling: the job gets its grace period to stop"
            self.cancel_requested = True
        except Exception as e:  # noqa: BLE001 - shown in the widget, never a traceback
            note = f"cancel failed: {e}"
        with self._lock:
            self.note = note
        with self._flush_lock:
            self.cancel_button.description = "Cancel"
            self.cancel_button.tooltip = "cancel the job (it stops after its grace period)"
            self.cancel_button.disabled = self.cancel_requested
        self._flush()

    def _disarm_cancel(self) -> None:
        """Not confirmed in time: back to a plain Cancel."""
        if self._confirm_until and time.monotonic() >= self._confirm_until:
            self._confirm_until = 0.0
            with self._flush_lock:
                self.cancel_button.description = "Cancel"
                self.cancel_button.tooltip = "cancel the job (it stops after its grace period)"

    def request_detach(self) -> None:
        """The Detach button: stop following; the job goes on."""
        if self._detach_fn is not None:
            self._detach_fn()
        with self._lock:
            self.note = f"detached: %gpuqueue attach {self.job.get('id')} re-attaches"
        self.close_updates()

    def close_updates(self) -> None:
        """Draw the last state and stop the ticker; Cancel stays usable while the job is
        active (after a detach the kernel is idle again)."""
        self._closed.set()
        self._flush()
        with self._flush_lock:
            self.detach_button.disabled = True
            self.cancel_button.disabled = self.state in TERMINAL or self.cancel_requested
            if not self.cancel_button.disabled:
                self.cancel_button.tooltip = "cancel the job (it stops after its grace period)"

    # -- drawing --------------------------------------------------------------------------
    def _add_metrics(self, d: dict[str, Any]) -> None:
        step = d.get("step")
        if step is None:
            step = len(self.points)
        if self.curve_key is None:
            self.curve_key = next((k for k in CURVE_KEYS if isinstance(d.get(k), (int, float))), None)
            if self.curve_key is None:
                self.curve_key = next(
                    (k for k, v in d.items()
                     if k not in ("step", "t", "time", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)),
                    None,
                )
        value = d.get(self.curve_key) if self.curve_key else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.points and float(step) < self.points[-1][0]:  # a resumed attempt goes on from its
                self.points = [p for p in self.points if p[0] < float(step)]  # checkpoint: its steps replace
            self.points.append((float(step), float(value)))
            if len(self.points) > CURVE_POINTS:
                self.points = self.points[::2]

    def _add_state(self, d: dict[str, Any], when: Optional[float]) -> None:
        said = state_event_line(d)  # the words of the text view and `gpuqueue logs`
        state = d.get("state")
        if state is None:  # a stop request (time limit, cancel, preemption): no new state
            if said:
                self.log_lines.append(said)
                self.lines_total += 1
            return
        self.state = state
        if state == "starting":
            self.node = d.get("node")
            self.gpus = d.get("gpus") or []
            self.attempt = d.get("attempt")
            self.started = when or time.time()
            self.pending = None
        elif state == "running" and self.started is None:
            self.started = when or time.time()
        elif state in ("queued", "retrying"):
            if d.get("after") and said:  # an attempt ended and the job waits again
                self.log_lines.append(said)
                self.lines_total += 1
            self.started = None
        if state in TERMINAL:
            self.ended = when or time.time()

    def state_text(self) -> str:
        """The state line: queued → position, ETA, reason; running → node, GPUs, elapsed."""
        with self._lock:
            s = self.state
            if s in WAITING and self.pending:
                p = self.pending
                eta = f", ETA {fmt_duration(p['eta_s'])}" if p.get("eta_s") is not None else ""
                why = p.get("message") or p.get("reason")
                # no place yet (0: a cluster's scheduler has not placed the job since it came): the words alone
                text = f"{s}: position {p['position']}{eta}: {why}" if p.get("position") else f"{s}: {why}{eta}"
            elif s in ("starting", "running"):
                ids = ", ".join(str(i) for i in self.gpus)
                gpus = f"GPU{'s' if len(self.gpus) > 1 else ''} {ids}" if self.gpus else "CPU"
                elapsed = fmt_duration(time.time() - self.started) if self.started else "0s"
                text = f"{s} on {self.node or '?'} ({gpus}), elapsed {elapsed}"
                if self.attempt and self.attempt > 1:
                    text += f", attempt {self.attempt}"
            elif s in TERMINAL:
                took = ""
                if self.started and self.ended:
                    took = f" after {fmt_duration(self.ended - self.started)}"
                text = f"{s}{took}"
                if s != "succeeded" and self.job.get("error"):
                    text += f": {str(self.job['error']).splitlines()[0][:200]}"
            else:
                text = s
            if self.note:
                text += f" ({self.note})"
            return text

    def progress_fraction(self) -> Optional[float]:
        with self._lock:
            if self.total and self.done is not None:
                return max(0.0, min(1.0, float(self.done) / float(self.total)))
            return None

    def text_summary(self) -> str:
        """One plain line for frontends that cannot render widgets."""
        frac = self.progress_fraction()
        prog = f" [{frac:.0%}]" if frac is not None else ""
        return f"[gpuqueue] {self.job.get('id', '?')}: {self.state_text()}{prog}"

    def _flush(self) -> None:
        """Copy the state into the widget models (any thread; serialised)."""
        with self._lock:
            name = (self.job.get("spec") or {}).get("name") or self.job.get("name") or ""
            title = f"<b>{html.escape(self.job.get('id', ''))}</b> {html.escape(name)}"
            state = self.state
            status = self.state_text()
            frac = self.progress_fraction()
            done, total = self.done, self.total
            curve = svg_curve(self.points, self.curve_key or "") if self.points else ""
            lines = list(self.log_lines)
            if self.live_line:
                lines.append(self.live_line)
            skipped = self.lines_total - len(self.log_lines)
            cps = list(self.checkpoints)
        colour = {"succeeded": "green", "failed": "#c00", "timed_out": "#c00", "cancelled": "#a60"}.get(state, "inherit")
        log_html = "<pre class='gpuqueue-log' style='margin:0'>"
        if skipped > 0:
            log_html += html.escape(f"… {skipped} earlier lines (%gpuqueue logs {self.job.get('id')} shows them all)\n")
        log_html += html.escape("\n".join(lines)) + "</pre>"
        with self._flush_lock:
            self.redraws += 1
            if state in TERMINAL and not self.cancel_button.disabled:
                self.cancel_button.disabled = True  # the job ended: nothing to cancel (before finish())
            if self.title.value != title:
                self.title.value = title
            self.status.value = f"<span style='color:{colour}'>{html.escape(status)}</span>"
            if frac is not None:
                self.progress.layout.visibility = "visible"
                self.progress.value = frac
                self.progress.bar_style = "success" if state == "succeeded" else (
                    "danger" if state in ("failed", "timed_out") else "info")
                self.progress_text.value = f"{done:g} / {total:g} ({frac:.0%})"
            if curve and self.curve.value != curve:
                self.curve.value = curve
                self.curve.layout.display = None
            if self.log.value != log_html:
                self.log.value = log_html
                self.log_box.titles = (f"Log ({count(self.lines_total, 'line')})",)
            if cps:
                kept, rotated = listing(str(self.job.get("id", "")), cps)
                items = "".join(f"<li>{html.escape(head)}<br><code>{html.escape(where.strip())}</code></li>"
                                for head, where in map(entry_lines, kept[-20:]))
                note = f"<div>{html.escape(rotated_note(rotated))}</div>" if rotated else ""
                self.ckpts.value = f"<b>Checkpoints</b><ul style='margin:0'>{items}</ul>{note}"
                self.ckpts.layout.display = None

    def _tick_loop(self) -> None:
        period = 1.0 / REDRAW_HZ
        last_status = 0.0
        while not self._closed.is_set():
            self._closed.wait(period)
            if self._closed.is_set():
                return
            now = time.monotonic()
            if self._refresh_fn and self.state in WAITING \
                    and now - self._last_refresh > PENDING_REFRESH_S:
                self._last_refresh = now
                try:
                    job = self._refresh_fn(self.job["id"])
                    with self._lock:
                        if job["state"] == self.state:
                            self.pending = job.get("pending")
                    self._dirty.set()
                except Exception:  # noqa: BLE001 - the next refresh may work
                    pass
            # the elapsed time moves once a second even when nothing arrives
            if self._dirty.is_set() or (self.state == "running" and now - last_status >= 1.0):
                self._dirty.clear()
                last_status = now
                self._flush()

    def model_state(self) -> dict[str, Any]:
        """What the widget shows, as plain values (for tests and debugging)."""
        return {
            "state": self.state,
            "status": self.status.value,
            "progress": self.progress.value if self.progress.layout.visibility == "visible" else None,
            "progress_text": self.progress_text.value,
            "curve_points": self.curve.value.count(",") if self.curve.value else 0,
            "curve_svg": self.curve.value,
            "points": list(self.points),
            "log": self.log.value,
            "lines_total": self.lines_total,
            "checkpoints": self.ckpts.value,
            "redraws": self.redraws,
            "cancel_disabled": self.cancel_button.disabled,
            "cancel_label": self.cancel_button.description,
            "detach_disabled": self.detach_button.disabled,
        }
