"""The job process of a cell job: ``python -m gpuqueue.job.jobmain JOB_DIR``.

Runs under the notebook kernel's interpreter and working directory. Loads the payload, checks it
was pickled by a compatible Python and cloudpickle, rebuilds the cell's inputs, executes the
cell, and stores the names it assigned in ``result.pkl`` (or the error in ``error.json``) in the
attempt folder named by ``GPUQUEUE_ATTEMPT_DIR``.
"""

from __future__ import annotations

import importlib
import linecache
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

from . import channel, distributed, jobapi
from ..attempt.jobdir import write_bytes_atomic, write_json_atomic
from .payload import pack_results, version_mismatch

CELL_FILENAME = "<gpuqueue-cell>"


def _fail(attempt_dir: Path, kind: str, message: str, tb: str = "") -> int:
    multi = jobapi.world_size() > 1
    rank = str(jobapi.rank())
    if kind == "JobStopped" and multi and distributed.peer_failure() is not None:
        # torchrun stopped this rank because another failed: that rank's error is the job's
        # (its error.json, or the launcher's line when it could write none)
        print(f"gpuqueue: {message}", file=sys.stderr)
        return 1
    # in a multi-rank job, a rank stopped because another failed must not hide that error
    stopped_only = kind == "JobStopped" and (attempt_dir / "error.json").exists()
    if not stopped_only and (jobapi.is_main_process() or kind != "JobStopped"):
        record: dict[str, Any] = {"type": kind, "message": message, "traceback": tb}
        if multi and kind != "JobStopped":
            record["rank"] = rank  # "rank 1 failed: ValueError: ..." (gpuqueue.queue.lifecycle)
            distributed.record_failure(rank, 1, f"{kind}: {message}")  # before torchrun stops the others
        write_json_atomic(attempt_dir / "error.json", record)
        jobapi.emit("info", {"error": {"type": kind, "message": message}})
    print(f"{kind}: {message}", file=sys.stderr)
    return 1


def _cell_traceback(exc: BaseException) -> str:
    """The traceback from the cell's first frame on (the runner's own frames are noise)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILENAME:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def run(job_dir: Path, attempt_dir: Path) -> int:
    """Execute the cell; 0 on success. The stop handler is in place before anything else (the
    payload, the cell's inputs, which may take long to load): a stop that comes meanwhile says
    why, as it does while the cell runs (in a multi-rank job: that another rank failed)."""
    try:
        channel.install_stop_handler()
        return _run(job_dir, attempt_dir)
    except channel.JobStopped as e:
        return _fail(attempt_dir, "JobStopped", str(e))


def _run(job_dir: Path, attempt_dir: Path) -> int:
    payload: dict[str, Any] = pickle.loads((job_dir / "payload.pkl").read_bytes())
    why = version_mismatch(payload)
    if why:
        return _fail(attempt_dir, "EnvironmentMismatch", why)
    for p in reversed(payload.get("sys_path", [])):
        if p not in sys.path:
            sys.path.append(p)
    import cloudpickle

    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        for alias, modname in payload["modules"].items():
            ns[alias] = importlib.import_module(modname)
        for name, raw in payload["inputs"].items():
            ns[name] = cloudpickle.loads(raw)
    except Exception as e:  # noqa: BLE001 - reported to the user as the job's error
        return _fail(
            attempt_dir,
            type(e).__name__,
            f"an input could not be rebuilt in the job: {e}",
            traceback.format_exc(),
        )
    # __main__ must be the cell's namespace so that pickled classes/functions resolve
    main_mod = sys.modules["__main__"]
    main_mod.__dict__.update(ns)
    ns = main_mod.__dict__
    source: str = payload["source"]
    linecache.cache[CELL_FILENAME] = (len(source), None, source.splitlines(True), CELL_FILENAME)
    from . import hf

    hf.install_hook()  # attaches to transformers.Trainer if the cell imports it; imports nothing now
    try:
        code = compile(source, CELL_FILENAME, "exec")
        exec(code, ns)  # noqa: S102 - running the user's own cell is the point
    except channel.JobStopped as e:
        return _fail(attempt_dir, "JobStopped", str(e))
    except BaseException as e:  # noqa: BLE001 - SystemExit too: the cell ended abnormally
        if isinstance(e, SystemExit) and e.code in (0, None):
            pass
        else:
            return _fail(attempt_dir, type(e).__name__, str(e), _cell_traceback(e))
    if not jobapi.is_main_process():
        return 0  # rank 0 brings the results back
    blob, unreturnable = pack_results(ns, payload["outputs"])
    write_bytes_atomic(attempt_dir / "result.pkl", blob)
    returned = [n for n in payload["outputs"] if n in ns and n not in unreturnable]
    write_json_atomic(attempt_dir / "result.json", {"names": returned, "unreturnable": unreturnable})
    jobapi.emit("result", {"names": returned, "unreturnable": unreturnable})
    for name, reason in unreturnable.items():
        print(f"gpuqueue: {name!r} cannot come back to the notebook: {reason}", file=sys.stderr)
    return 0


def main() -> int:
    """Entry point."""
    if len(sys.argv) != 2:
        print("usage: python -m gpuqueue.job.jobmain JOB_DIR", file=sys.stderr)
        return 2
    attempt_dir = Path(os.environ.get("GPUQUEUE_ATTEMPT_DIR", "."))
    return run(Path(sys.argv[1]), attempt_dir)


if __name__ == "__main__":
    code = main()
    channel.run_exit_hooks()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for stray non-daemon threads of the cell
