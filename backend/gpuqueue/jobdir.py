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
from pathlib import Path
from typing import Any


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
