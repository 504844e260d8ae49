"""Job interpreters started ahead of their job (the runner's side of ``gpuqueue.job.warmstart``).

A cell job's first seconds on a CPU machine are its interpreter's start and its heavy imports
(``import torch``: 2-3 s). A warm runner is started before its attempt is known; given a
:func:`warm_spec` it starts the job's interpreter at once, with the job's pipes, so those imports
are done while the queue waits for the next cell. When the attempt comes, the interpreter is
used only if the launch is what it was prepared for (:func:`serves`):

* a single-process cell job (``python -m gpuqueue.job.jobmain``) with the same interpreter;
* no user switch: the job would run as the runner's own user (an interpreter never changes
  identity, so a job of another user never gets one);
* the same environment but for the per-attempt names (:data:`PER_JOB`): anything a user set
  (``OMP_NUM_THREADS``, ``PYTHONPATH``...) that could change how an import behaves means a cold
  start;
* no module of the job's folder shadows one imported ahead (a ``torch.py`` beside the notebook).

Otherwise the interpreter is ended and the job starts cold, as before. Either way one
interpreter runs at most one job, and it is started from the allow-listed environment of
``gpuqueue.attempt.launch`` (no credentials).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
from typing import Any, Mapping, Optional

# names that differ from job to job; the warm interpreter takes them when its job comes
PER_JOB = frozenset({
    "CUDA_VISIBLE_DEVICES", "GPUQUEUE_JOB_ID", "GPUQUEUE_ATTEMPT", "GPUQUEUE_JOB_DIR",
    "GPUQUEUE_ATTEMPT_DIR", "GPUQUEUE_NODE", "GPUQUEUE_NUM_GPUS", "GPUQUEUE_PRECISION",
    "GPUQUEUE_GRAD_CHECKPOINTING", "GPUQUEUE_RESUME_FROM",
})
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
JOBMAIN = "gpuqueue.job.jobmain"


def warm_spec(python: str, env: Mapping[str, str], imports: list[str]) -> dict[str, Any]:
    """What a warm runner needs to start a job interpreter ahead: the interpreter, the
    environment a cell job of this queue gets (as ``build_launch`` makes it; the per-job names
    are dropped) and the modules to import ahead."""
    bad = [m for m in imports if not MODULE_NAME.match(m)]
    if bad:
        raise ValueError(f"warm_imports: {bad[0]!r} is not a module name")
    return {"python": python, "env": {k: v for k, v in env.items() if k not in PER_JOB}, "imports": list(imports)}


def serves(spec: Mapping[str, Any], launch: Mapping[str, Any]) -> bool:
    """Whether an interpreter started from ``spec`` may run ``launch`` (see the module doc)."""
    argv = launch.get("argv") or []
    if launch.get("user") is not None:
        return False
    if len(argv) != 4 or argv[0] != spec.get("python") or argv[1:3] != ["-m", JOBMAIN]:
        return False
    env = launch.get("env") or {}
    if {k: v for k, v in env.items() if k not in PER_JOB} != spec.get("env"):
        return False
    return not shadowed(spec.get("imports", []), launch.get("cwd"))


def shadowed(imports: list[str], cwd: Optional[str]) -> bool:
    """Whether the job's folder holds a module of the same name as one imported ahead (a cold
    start, with that folder first on ``sys.path``, would import the folder's one)."""
    if not cwd:
        return False
    for top in {m.split(".")[0] for m in imports}:
        if os.path.exists(os.path.join(cwd, top + ".py")) or os.path.exists(os.path.join(cwd, top, "__init__.py")):
            return True
    return False


class WarmJob:
    """One job interpreter started ahead, on the runner's pipes; used once or ended."""

    def __init__(self, spec: Mapping[str, Any], stdout: int, stderr: int, event_fd: int):
        self.spec = spec
        env = dict(spec["env"])
        env.update({"CUDA_VISIBLE_DEVICES": "", "GPUQUEUE_EVENT_FD": str(event_fd), "PYTHONUNBUFFERED": "1"})
        self._ready, ready_w = os.pipe()  # it writes one byte here once its imports are done
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [spec["python"], "-m", "gpuqueue.job.warmstart", str(ready_w), *spec.get("imports", [])],
                cwd="/",
                env=env,
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(event_fd, ready_w),
                start_new_session=True,
            )
        except BaseException:
            os.close(self._ready)
            raise
        finally:
            os.close(ready_w)

    def ready(self) -> bool:
        """Whether its imports are done (it waits for its launch now)."""
        if self._ready < 0:
            return True
        if not select.select([self._ready], [], [], 0)[0]:
            return False
        ok = os.read(self._ready, 1) == b"1"
        os.close(self._ready)
        self._ready = -1
        return ok

    def take(self, launch: Mapping[str, Any], env: Mapping[str, str]) -> Optional[subprocess.Popen[bytes]]:
        """Hand it ``launch`` (with the job's whole ``env``) if it serves it and still waits;
        returns its process, now the job's. None: it was ended; start the job cold. One still
        importing is ended too: a cell that does not need those imports would wait for them."""
        if self.proc.poll() is None and serves(self.spec, launch) and self.ready():
            try:
                assert self.proc.stdin is not None
                line = json.dumps({"argv": launch["argv"], "env": dict(env), "cwd": launch.get("cwd")})
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.close()
                return self.proc
            except (OSError, ValueError):
                pass
        self.discard()
        return None

    def discard(self) -> None:
        """End it without running anything (EOF, then SIGKILL to its session)."""
        if self._ready >= 0:
            os.close(self._ready)
            self._ready = -1
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
