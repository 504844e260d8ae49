"""The on-disk layout of a job, shared by the service, the runner and the job process.

    <state_dir>/jobs/<job_id>/
        spec.json                 the JobSpec
        payload.pkl               the cloudpickled cell (cell jobs)
        attempt-<n>/
            launch.json           what the runner needs: argv, cwd, env, GPU ids
            events.jsonl          everything the attempt said, one JSON object a line
            control.json          a stop request from the service (reason, grace)
            exit.json             how the attempt ended (written last, atomically)
            result.pkl            the cell's returned names (cell jobs that succeeded)
            runner.log            the runner's own errors
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

READ_CHUNK = 4 * 1024 * 1024  # bytes of events.jsonl read at a time


def job_dir(state_dir: str | Path, job_id: str) -> Path:
    """Folder of one job."""
    return Path(state_dir) / "jobs" / job_id


def attempt_dir(state_dir: str | Path, job_id: str, number: int) -> Path:
    """Folder of one attempt of a job."""
    return job_dir(state_dir, job_id) / f"attempt-{number}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes through a temporary file, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@dataclass
class EventBatch:
    """What an attempt appended to its events.jsonl since an offset (complete lines only)."""

    events: list[tuple[Optional[float], str, dict[str, Any]]] = field(default_factory=list)
    runner: Optional[dict[str, Any]] = None  # the runner's own first record: {"t", "data"}
    exit: Optional[dict[str, Any]] = None  # the exit record's data, if it came
    offset: int = 0  # where the next read starts
    complete_line: bool = False  # False: nothing new, or only a partial line


def read_events(path: Path, offset: int) -> EventBatch:
    """Parse the complete lines of ``path`` from ``offset`` (at most ``READ_CHUNK`` bytes);
    the runner's ``runner`` and ``exit`` records are set apart from the job's own events.
    Unparsable lines are skipped; a missing file reads as nothing new."""
    out = EventBatch(offset=offset)
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(READ_CHUNK)
    except FileNotFoundError:
        return out
    end = data.rfind(b"\n")
    if end < 0:
        return out
    out.offset, out.complete_line = offset + end + 1, True
    for raw in data[: end + 1].splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        type_, d = rec.get("type"), rec.get("data", {})
        if type_ == "exit":
            out.exit = d
        elif type_ == "runner":
            out.runner = {"t": rec.get("t"), "data": d}
        else:
            out.events.append((rec.get("t"), str(type_), d))
    return out
