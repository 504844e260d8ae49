"""A job interpreter started ahead of its job.

``python -m gpuqueue.job.warmstart READY_FD MODULE...``: a warm runner
(``gpuqueue.attempt.warmjob``) starts one of these before it knows its attempt,
with the job's stdout, stderr and event pipe already in place and the allow-listed environment
every cell job gets. It imports (what they print discarded) what the queue's configuration names (``warm_imports``, e.g.
``torch``: seconds on a CPU machine) and ``gpuqueue.job.jobmain``'s own imports, then waits on
stdin for one line (after writing one byte to ``READY_FD``): ``{"argv": [...], "env": {...}, "cwd": ...}`` of its launch. It takes that
environment and working folder and runs ``gpuqueue.job.jobmain`` exactly as
``python -m gpuqueue.job.jobmain JOB_DIR`` would (a fresh ``__main__``). EOF instead: it exits,
having run nothing. One interpreter runs at most one job; it never runs as anyone but the
user its runner started it as.

No GPU is visible while it waits (``CUDA_VISIBLE_DEVICES`` is empty): an import that touched
CUDA would fix the device list before the job's own is set, so such an interpreter refuses to
serve (it exits 3 and its runner starts the job cold).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys
from typing import Any

NOT_READY = 3  # exit code: this interpreter must not run the job (the runner starts it cold)


def preload(modules: list[str]) -> list[str]:
    """Import ``modules`` (those that fail to import are left to the job, which will say why);
    returns the ones imported."""
    done = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job imports it again and shows the error
            continue
        done.append(name)
    return done


def preload_quietly(modules: list[str]) -> list[str]:
    """:func:`preload` with fds 1 and 2 on /dev/null: what the imports print is not the job's
    output (it would show as the next cell's, and a full pipe would block the interpreter before
    its job comes); the job's stdout and stderr are back in place afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        return preload(modules)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def cuda_touched() -> bool:
    """True if something imported here initialised CUDA (torch's lazy init ran)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        return bool(cuda is not None and cuda.is_initialized())
    except Exception:  # noqa: BLE001 - a broken torch: not ours to judge, the job will show it
        return False


def enter(launch: dict[str, Any]) -> None:
    """Become the launch's job process: its environment, folder, argv and ``sys.path[0]``."""
    start_dir = os.getcwd()
    os.environ.clear()
    os.environ.update(launch["env"])
    if launch.get("cwd"):
        os.chdir(launch["cwd"])
    here = os.getcwd()
    # ``python -m`` puts the folder it started in first on sys.path: the job's, not ours
    if sys.path and sys.path[0] in (start_dir, "", "."):
        sys.path[0] = here
    sys.argv = ["-m", *launch["argv"][3:]]


def main() -> int:
    """Entry point (see the module docstring)."""
    # jobmain's own imports, done ahead (not jobmain itself: it runs as a fresh __main__ below)
    import cloudpickle  # noqa: F401

    from ..attempt import jobdir  # noqa: F401
    from . import channel, hf, jobapi, payload  # noqa: F401

    ready_fd = int(sys.argv[1])
    preload_quietly(sys.argv[2:])
    if cuda_touched():
        os.close(ready_fd)
        print("gpuqueue: a warm import initialised CUDA; this interpreter cannot serve", file=sys.stderr)
        return NOT_READY
    os.write(ready_fd, b"1")  # its runner hands it a launch only now
    os.close(ready_fd)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    launch = json.loads(line)
    sys.stdin.close()
    os.close(0)
    os.open(os.devnull, os.O_RDONLY)  # fd 0 again, as the cold job has it (stdin=DEVNULL)
    sys.stdin = open(0, closefd=False)
    enter(launch)
    runpy.run_module("gpuqueue.job.jobmain", run_name="__main__", alter_sys=True)
    return 0  # not reached: jobmain ends the process with os._exit


if __name__ == "__main__":
    sys.exit(main())
