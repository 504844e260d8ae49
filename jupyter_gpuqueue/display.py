"""How a job shows in a cell. ``TextView`` prints (works in any frontend and in tests);
richer views (the ipywidgets job widget) implement the same three methods."""

from __future__ import annotations

import sys
from typing import Any, Protocol


class JobView(Protocol):
    """What the magic calls while it follows a job."""

    def start(self, job: dict[str, Any]) -> None:
        """The job was submitted (or attached): show its id and state."""

    def event(self, ev: dict[str, Any]) -> None:
        """One event of the job's stream (log line, state change, metrics, ...)."""

    def finish(self, job: dict[str, Any]) -> None:
        """The job ended (or we stopped following it)."""


class TextView:
    """Plain text: a state line per change, log lines as they arrive."""

    def __init__(self, out: Any = None, err: Any = None):
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def start(self, job: dict[str, Any]) -> None:
        verb = "attached to" if job.get("attached") else "submitted"
        name = f" ({job['spec']['name']})" if job.get("spec", {}).get("name") else ""
        line = f"[gpuqueue] {verb} {job['id']}{name}: {job['state']}"
        pending = job.get("pending")
        if pending and job["state"] in ("queued", "retrying"):
            line += f", position {pending['position']}: {pending['message']}"
        print(line, file=self.out, flush=True)

    def event(self, ev: dict[str, Any]) -> None:
        d = ev.get("data", {})
        t = ev.get("type")
        if t == "log":
            if d.get("replace"):
                return  # progress-bar redraws: the final line arrives with its newline
            print(d.get("line", ""), file=self.err if d.get("stream") == "stderr" else self.out, flush=True)
        elif t == "state":
            state = d.get("state")
            if state == "starting":
                gpus = d.get("gpus") or []
                where = f" on {d.get('node')}" + (f" GPUs {gpus}" if gpus else " (CPU)")
                print(f"[gpuqueue] starting attempt {d.get('attempt')}{where}", file=self.out, flush=True)
            elif state in ("queued", "retrying") and d.get("after"):
                again = "queued again" if state == "queued" else "will retry"
                print(f"[gpuqueue] attempt ended ({d['after']}); {again}", file=self.out, flush=True)
            elif state not in ("queued", "starting"):
                print(f"[gpuqueue] {state}", file=self.out, flush=True)
        elif t == "warning":
            print(f"[gpuqueue] warning: {d.get('message')}", file=self.out, flush=True)
        elif t == "checkpoint":
            print(f"[gpuqueue] checkpoint saved: step {d.get('step')} -> {d.get('path')}", file=self.out, flush=True)

    def finish(self, job: dict[str, Any]) -> None:
        pass
