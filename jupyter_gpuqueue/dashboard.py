"""``%gpuqueue dashboard``: a live ipywidgets view of the queue.

Pools with GPUs used/free, my jobs with state and progress (cancel buttons), the queue with
positions and reasons, and my fair-share standing. A background thread refreshes it every
``REFRESH_S`` seconds from the REST API (``GET queue``, ``GET jobs``, and the new events of
running jobs for their progress); it sets widget values only. ``text_dashboard`` renders the
same for frontends without widgets.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any, Callable, Optional

import ipywidgets as W

from gpuqueue.queue.states import STATE_GROUPS
from gpuqueue.queue.text import count, pending_text

from .widget import fmt_duration

REFRESH_S = 2.0
ACTIVE = set(STATE_GROUPS["live"])  # the dashboard's "active" rows: every unfinished job
WAITING = set(STATE_GROUPS["waiting"])


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def gpu_hours(h: float) -> str:
    """``0 GPU-hours``, ``0.42 GPU-hours``, ``1 GPU-hour``, ``12.5 GPU-hours``."""
    n = "0" if h == 0 else f"{h:.0f}" if h >= 100 else f"{h:.1f}" if h >= 10 else f"{h:.2g}"
    return f"{n} GPU-hour{'' if n == '1' else 's'}"


def span(seconds: float) -> str:
    """``7 days``, ``12 hours``, ``30m00s``."""
    for unit, size in (("day", 86400), ("hour", 3600)):
        if seconds >= size:
            n = f"{seconds / size:.1f}".removesuffix(".0")
            return f"{n} {unit}{'' if n == '1' else 's'}"
    return fmt_duration(seconds)


def fair_share_rows(queue: dict[str, Any]) -> list[tuple[str, str]]:
    """My fair-share standing in words, from the queue summary's ``share`` (the same words as
    the sidebar), and my active jobs."""
    rows: list[tuple[str, str]] = []
    s = queue.get("share")
    if s:
        half = f" (halves every {span(s['half_life_s'])})" if s.get("half_life_s") else ""
        users = f"user{'' if s['of'] == 1 else 's'}"
        running = (f"{s['running']} job{'' if s['running'] == 1 else 's'} on {s['gpus_held']} "
                   f"GPU{'' if s['gpus_held'] == 1 else 's'}") if s.get("running") else "nothing running"
        rows += [("your recent use", html.escape(gpu_hours(s["usage_gpu_hours"]) + half)),
                 ("your weight", _num(s["weight"])),
                 ("your turn", f"{ordinal(s['place'])} of {s['of']} {users} (least use per weight goes first)"),
                 ("now", running)]
    counts = (queue.get("me") or {}).get("jobs") or {}
    if counts:
        rows.append(("my active jobs", ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))))
    return rows


def job_line(j: dict[str, Any], progress: Optional[tuple[float, float]] = None) -> str:
    """A job's state in one line: position and reason when waiting, node/GPUs and progress
    when running."""
    state = j.get("state")
    name = f" {j['name']}" if j.get("name") else ""
    text = f"{j['id']}{name}: {state}"
    p = j.get("pending")
    if state in WAITING and p:
        text += f" {pending_text(p)}"
    elif state in ("starting", "running"):
        gpus = f"GPUs {j.get('gpu_ids')}" if j.get("gpu_ids") else count(j.get("gpus", 0), "GPU")
        text += f" on {j.get('node') or '?'} ({gpus})"
        if j.get("started_at"):
            text += f", {fmt_duration(time.time() - j['started_at'])}"
    if progress and progress[1]:
        text += f" [{progress[0] / progress[1]:.0%}]"
    return text


def text_dashboard(queue: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """The dashboard as plain text."""
    out = [f"GPU queue ({queue.get('mode', '?')}), user {(queue.get('me') or {}).get('user', '?')}"]
    for name, p in (queue.get("pools") or {}).items():
        total, used = p.get("gpus_total", 0), p.get("gpus_used", 0)
        out.append(f"  pool {name}: {used}/{total} GPUs used, {total - used} free, "
                   f"{p.get('running', 0)} running, {p.get('queued', 0)} queued")
    active = [j for j in jobs if j.get("state") in ACTIVE]
    out.append(f"my active jobs: {len(active)}")
    out += [f"  {job_line(j)}" for j in active]
    waiting = sorted((j for j in jobs if j.get("state") in WAITING and j.get("pending")),
                     key=lambda j: j["pending"].get("position") or 0)
    if waiting:
        out.append("queue:")
        out += [f"  #{j['pending'].get('position')} {j['id']}: {j['pending'].get('message')}" for j in waiting]
    rows = fair_share_rows(queue)
    if rows:
        out.append("fair share: " + "; ".join(f"{k} {html.unescape(v)}" for k, v in rows))
    return "\n".join(out)


class Dashboard:
    """The live dashboard widget. ``client_factory()`` makes a REST client per thread."""

    def __init__(self, client_factory: Callable[[], Any], all_users: bool = False,
                 refresh_s: float = REFRESH_S):
        self._client_factory = client_factory
        self._client = client_factory()  # the refresher's
        self._main_client: Any = None  # the buttons' (kernel main thread)
        self.all_users = all_users
        self.refresh_s = refresh_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, tuple[float, float]] = {}
        self._seen: dict[str, int] = {}
        self.jobs: list[dict[str, Any]] = []
        self.queue: dict[str, Any] = {}
        self.refreshes = 0
        self.error = ""
        self.header = W.HTML()
        self.pools = W.HTML()
        self.jobs_box = W.VBox()
        self._empty = W.HTML("<i>no active jobs</i>")
        self.queue_html = W.HTML()
        self.fair = W.HTML()
        self._rows: dict[str, W.HBox] = {}
        self.root = W.VBox(
            [self.header, self.pools, W.HTML("<b>My jobs</b>"), self.jobs_box,
             W.HTML("<b>Queue</b>"), self.queue_html, W.HTML("<b>Fair share</b>"), self.fair],
            layout=W.Layout(border="1px solid #ddd", padding="4px 8px"),
        )
        self.root.add_class("gpuqueue-dashboard")
        self._thread = threading.Thread(target=self._loop, name="gpuqueue-dashboard", daemon=True)

    def show(self) -> None:
        """Display the dashboard and start refreshing it."""
        from IPython.display import display

        self.refresh()
        display(self.root)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing (the widget stays as it was)."""
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> None:
        """Fetch the queue and jobs and redraw (any thread)."""
        try:
            queue = self._client.queue()
            jobs = self._client.list(all_users=self.all_users)
            for j in jobs:
                if j["state"] in ("running", "starting"):
                    self._update_progress(j["id"])
            self.error = ""
        except Exception as e:  # noqa: BLE001 - shown in the header; the next refresh may work
            self.error = str(e)
            queue, jobs = self.queue, self.jobs
        with self._lock:
            self.queue, self.jobs = queue, jobs
            self.refreshes += 1
            self._draw()

    def _update_progress(self, job_id: str) -> None:
        after = self._seen.get(job_id, 0)
        for ev in self._client.events(job_id, after):
            after = ev["seq"]
            if ev["type"] == "progress" and ev["data"].get("total"):
                self._progress[job_id] = (float(ev["data"].get("done") or 0), float(ev["data"]["total"]))
        self._seen[job_id] = after

    def cancel(self, job_id: str) -> None:
        """A Cancel button: cancel the job and redraw."""
        if self._main_client is None:
            self._main_client = self._client_factory()
        try:
            self._main_client.cancel(job_id)
        except Exception as e:  # noqa: BLE001
            self.error = f"cancel {job_id}: {e}"
        self.refresh()

    def _draw(self) -> None:
        q = self.queue
        me = q.get("me") or {}
        err = f" <span style='color:#c00'>{html.escape(self.error)}</span>" if self.error else ""
        self.header.value = (
            f"<b>GPU queue</b> ({html.escape(str(q.get('mode', '?')))}) · {html.escape(str(me.get('user', '?')))}"
            f"{' (admin)' if me.get('admin') else ''} · updated {time.strftime('%H:%M:%S')}{err}"
        )
        rows = []
        for name, p in (q.get("pools") or {}).items():
            total, used = int(p.get("gpus_total", 0)), int(p.get("gpus_used", 0))
            pct = 100 * used / total if total else 0
            bar = (f"<div style='width:120px;height:10px;background:#eee;display:inline-block'>"
                   f"<div style='width:{pct:.0f}%;height:10px;background:#1f77b4'></div></div>")
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{bar} {used}/{total} used, {total - used} free</td>"
                        f"<td>{p.get('running', 0)} running</td><td>{p.get('queued', 0)} queued</td></tr>")
        self.pools.value = "<table class='gpuqueue-pools'>" + "".join(rows) + "</table>"
        active = [j for j in self.jobs if j.get("state") in ACTIVE]
        children = []
        for j in active:
            row = self._rows.get(j["id"])
            if row is None:
                button = W.Button(description="Cancel", button_style="danger", icon="stop",
                                  layout=W.Layout(width="90px"))
                button.on_click(lambda _b, jid=j["id"]: self.cancel(jid))
                row = self._rows[j["id"]] = W.HBox([W.HTML(), button])
            row.children[0].value = html.escape(job_line(j, self._progress.get(j["id"])))
            children.append(row)
        for jid in set(self._rows) - {j["id"] for j in active}:
            self._rows.pop(jid)
        if list(self.jobs_box.children) != (children or [self._empty]):
            self.jobs_box.children = children or [self._empty]
        waiting = sorted((j for j in self.jobs if j.get("state") in WAITING and j.get("pending")),
                         key=lambda j: j["pending"].get("position") or 0)
        self.queue_html.value = "<ol style='margin:0'>" + "".join(
            f"<li value='{j['pending'].get('position') or 0}'>{html.escape(j['id'])} "
            f"{html.escape(j.get('name') or '')}: {html.escape(str(j['pending'].get('message') or j['pending'].get('reason')))}</li>"
            for j in waiting
        ) + "</ol>" if waiting else "<i>nothing waiting</i>"
        fair = fair_share_rows(q)
        self.fair.value = "<table>" + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in fair) + \
            "</table>" if fair else "<i>no usage recorded yet</i>"

    def model_state(self) -> dict[str, Any]:
        """What the dashboard shows, as plain values (tests, debugging)."""
        return {
            "header": self.header.value,
            "pools": self.pools.value,
            "jobs": [r.children[0].value for r in self.jobs_box.children if isinstance(r, W.HBox)],
            "queue": self.queue_html.value,
            "fair": self.fair.value,
            "refreshes": self.refreshes,
        }
