"""Helpers for driving training jobs through a real embedded queue."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from helpers.servers import wait_until

SCRIPTS = Path(__file__).parent / "scripts"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}


def submit_script(server: Any, script: str, args: list[str], gpus: int = 0, **spec: Any) -> str:
    """Submit ``python scripts/<script> ARGS`` as a command job; its id."""
    body = {"kind": "command", "command": [sys.executable, str(SCRIPTS / script), *args], "gpus": gpus, **spec}
    return server.client().submit(body, new=True)["id"]


def wait_done(server: Any, job_id: str, timeout: float = 240) -> dict[str, Any]:
    """Wait for a terminal state; the job record."""
    c = server.client()
    return wait_until(lambda: (j := c.get(job_id))["state"] in TERMINAL and j, timeout, 0.2, f"job {job_id} to end")


def by_attempt(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """A job's events split into attempts (at each 'starting' state event)."""
    out: list[list[dict[str, Any]]] = []
    for ev in events:
        if ev["type"] == "state" and ev["data"].get("state") == "starting":
            out.append([])
        if out:
            out[-1].append(ev)
    return out


def logs(events: list[dict[str, Any]]) -> str:
    return "\n".join(e["data"]["line"] for e in events if e["type"] == "log")


def wait_metric_step(server: Any, job_id: str, step: int, timeout: float = 120) -> list[dict[str, Any]]:
    """Wait until the job reported metrics at ``step`` or later; the events so far."""
    c = server.client()

    def seen() -> Any:
        evs = c.events(job_id)
        if c.get(job_id)["state"] in TERMINAL:
            raise AssertionError(f"job ended before step {step}: {logs(evs)[-3000:]}")
        steps = [e["data"].get("step") or 0 for e in evs if e["type"] == "metrics"]
        return evs if steps and max(steps) >= step else None

    return wait_until(seen, timeout, 0.1, f"metrics at step {step}")


def now() -> float:
    return time.time()
