"""Jobs that span several processes: ``torchrun`` on one node, Ray Train across nodes.

``launch_argv`` decides how an attempt is started (used by ``gpuqueue.attempt.launch``):

* ``%%train --gpus N`` (N > 1, one node): N processes under ``torchrun --standalone`` (DDP);
* ``--nodes M``: a Ray Train ``TorchTrainer`` with one worker per GPU the scheduler reserved
  (one per node for CPU jobs), each running the job's command with the usual torchrun
  environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
* otherwise the command as is.

A job's ``env`` may force the choice: ``GPUQUEUE_LAUNCHER=torchrun|ray|none`` (command jobs
with several GPUs run as given unless they ask for ``torchrun``, since such a command often is
``torchrun ...`` already).

Inside the ranks: rank 0 reports and saves (``gpuqueue.log``/``Checkpointer`` do that on their
own), ``gpuqueue.should_stop()`` is a collective so all ranks stop at the same step, and
``gpuqueue.distributed.init()`` sets up the process group (gloo on CPU, nccl on GPUs).

This module imports neither torch nor ray until a launcher runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, Optional

from ..attempt.failtext import StderrTail, exit_words, rank_error, tail_text

LAUNCHERS = ("torchrun", "ray", "none")
RANK_OMP_THREADS = "1"  # each torchrun rank's OMP_NUM_THREADS when the job sets none (torchrun's default)


def launcher_for(kind: str, gpus: int, nodes: int, env: dict[str, str]) -> str:
    """Which launcher an attempt uses (see the module docstring)."""
    forced = env.get("GPUQUEUE_LAUNCHER", "").strip().lower()
    if forced:
        if forced not in LAUNCHERS:
            raise ValueError(f"GPUQUEUE_LAUNCHER must be one of {', '.join(LAUNCHERS)}, not {forced!r}")
        return forced
    if nodes > 1:
        return "ray"
    if gpus > 1 and kind == "cell":
        return "torchrun"
    return "none"


def launch_argv(kind: str, argv: list[str], gpus: int, nodes: int, env: dict[str, str], python: str) -> list[str]:
    """The argv that starts ``argv`` with the right launcher."""
    try:
        mode = launcher_for(kind, gpus, nodes, env)
    except ValueError as e:  # the job fails with the message in its log, not a traceback
        return [python, "-c", "import sys; sys.exit(sys.argv[1])", f"gpuqueue: {e}"]
    if mode == "none":
        return argv
    if mode == "torchrun":
        return [python, "-m", "gpuqueue.job.distributed", "torchrun", "--nproc", str(max(gpus, 1)), "--", *argv]
    workers = gpus if gpus > 0 else nodes
    return [python, "-m", "gpuqueue.job.distributed", "ray", "--workers", str(workers),
            "--gpus-per-worker", "1" if gpus > 0 else "0", "--", *argv]


# -- helpers for the user's code -------------------------------------------------------------
def init(backend: Optional[str] = None) -> bool:
    """Initialise ``torch.distributed`` from the torchrun environment if not done yet (gloo on
    CPU, nccl with CUDA). False when the job is not distributed."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def precision_dtype() -> Any:
    """The torch dtype ``--precision`` asks for (``GPUQUEUE_PRECISION``), None for fp32."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(os.environ.get("GPUQUEUE_PRECISION", ""))


@contextlib.contextmanager
def autocast(device_type: Optional[str] = None) -> Iterator[None]:
    """``torch.autocast`` with the job's ``--precision`` (does nothing for fp32 or unset)."""
    import torch

    dtype = precision_dtype()
    if dtype is None:
        yield
        return
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield


def grad_checkpointing() -> bool:
    """True when the job asked for ``--grad-checkpointing``."""
    return os.environ.get("GPUQUEUE_GRAD_CHECKPOINTING") == "1"


# -- launchers -------------------------------------------------------------------------------
def _detach_event_pipe() -> None:
    """Rank processes must not use the runner's pipe number (their copy is closed or reused):
    they append to events.jsonl instead (see ``gpuqueue.job.jobapi.emit``)."""
    os.environ.pop("GPUQUEUE_EVENT_FD", None)


def run_torchrun(nproc: int, argv: list[str]) -> int:
    """Run ``argv`` as ``nproc`` ranks on this node under torchrun, each through :func:`run_rank`:
    the ranks write to the job's own stdout and stderr (no ``--tee``: torchrun would copy them
    from files, line by line, each with a ``[default0]:`` prefix and its progress bars never live)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    _detach_event_pipe()
    # torchrun gives each rank OMP_NUM_THREADS=1 when it is not set, with a warning banner of
    # '*****' lines at the top of every job's output: the same value, set here, without it. The
    # queue hands out GPUs, not CPUs, so a rank's CPU share is not known; 1 keeps the ranks of the
    # jobs that share a node from overloading it. A job that sets its own (its env) keeps it.
    os.environ.setdefault("OMP_NUM_THREADS", RANK_OMP_THREADS)
    log_dir = os.path.join(os.environ.get("GPUQUEUE_ATTEMPT_DIR", "."), "torchrun")
    args = get_args_parser().parse_args(
        ["--standalone", "--nnodes", "1", "--nproc-per-node", str(nproc), "--no-python", "--log-dir", log_dir,
         sys.executable, "-m", "gpuqueue.job.distributed", "rank", "--", *argv]
    )
    # torchrun's own lines on a rank's end ("Sending process N closing signal SIGTERM", "failed
    # (exitcode: 1) local_rank: 1 ... of binary: python"): the line below says it for the user
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(args)
    except SignalException as e:
        print(f"gpuqueue: the ranks were stopped ({signal.Signals(e.sigval).name})", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        print(f"gpuqueue: {_failed_ranks(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - torchrun could not run the ranks at all
        print(f"gpuqueue: the distributed job failed: {e}", file=sys.stderr)
        return 1
    return 0


# -- a rank that fails -----------------------------------------------------------------------
# When a rank ends with an error, torchrun stops the others with SIGTERM, as the queue's own stop
# (cancel, preemption, time limit) does. The failing rank's wrapper (run_rank) says so first, in
# $GPUQUEUE_ATTEMPT_DIR/ranks/failed-N.json, so the others say "stopped: rank N failed" rather than
# "asked to stop", and the launcher names that rank and its error, not torchrun's report.
RANK_FAILURES = "ranks"


def _failure_dir(adir: Optional[str] = None) -> Optional[str]:
    adir = adir or os.environ.get("GPUQUEUE_ATTEMPT_DIR")
    return os.path.join(adir, RANK_FAILURES) if adir else None


def stop_requested_by_queue() -> bool:
    """The queue asked the job to stop (its control.json; see gpuqueue.job.jobapi)."""
    adir = os.environ.get("GPUQUEUE_ATTEMPT_DIR")
    return bool(adir) and os.path.exists(os.path.join(str(adir), "control.json"))


def record_failure(rank: str, code: int, error: str, attempt_dir: Optional[str] = None,
                   tail: Optional[list[str]] = None, printed: Optional[bool] = None) -> None:
    """Say that ``rank`` failed on its own (``code`` != 0, no stop signal came to it), in
    ``attempt_dir`` (default: this process's attempt folder): ``error`` (its exit in words when
    empty; see :func:`gpuqueue.attempt.failtext.rank_error`), ``tail``, its last lines on stderr,
    and ``printed``: whether it wrote any line at all (None: not known), so that the ranks
    stopped because of it point at its lines only when there are some."""
    folder = _failure_dir(attempt_dir)
    if folder is None:
        return
    error = error.strip() or exit_words(code)
    record = {"rank": rank, "exit_code": code, "error": error[:2000], "time": time.time(), "tail": tail or []}
    if printed is not None:
        record["printed"] = printed
    try:
        if not os.path.isdir(folder):
            os.mkdir(folder)  # not its parent: on another node of a Ray job the attempt folder is not there
        if os.path.exists(os.path.join(folder, f"failed-{rank}.json")):
            return  # the cell's own record (gpuqueue.job.jobmain), from the exception itself
        tmp = os.path.join(folder, f".failed-{rank}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, os.path.join(folder, f"failed-{rank}.json"))
    except OSError:
        pass  # the others then say the job was asked to stop, as before


def rank_failures() -> list[dict[str, Any]]:
    """The ranks that failed on their own in this attempt, first failure first."""
    folder = _failure_dir()
    found = []
    try:
        names = os.listdir(folder) if folder else []
    except OSError:
        return []
    for name in names:
        if name.startswith("failed-") and name.endswith(".json"):
            try:
                with open(os.path.join(str(folder), name)) as f:
                    rec = json.load(f)
                tail, printed = rec.get("tail"), rec.get("printed")
                found.append({"rank": str(rec["rank"]), "exit_code": int(rec["exit_code"]),
                              "error": str(rec["error"]), "time": float(rec["time"]),
                              "tail": [str(x) for x in tail] if isinstance(tail, list) else [],
                              "printed": printed if isinstance(printed, bool) else None})
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return sorted(found, key=lambda r: r["time"])


def peer_failure() -> Optional[str]:
    """The rank whose failure made torchrun stop this one, or None: this rank was stopped by
    the queue (control.json), or is not a rank of a multi-rank job."""
    if int(os.environ.get("WORLD_SIZE", "1") or "1") <= 1 or stop_requested_by_queue():
        return None
    me = os.environ.get("RANK")
    failed = [f["rank"] for f in rank_failures() if f["rank"] != me]
    return failed[0] if failed else None


def stopped_by_peer_message(rank: str) -> str:
    """What a rank stopped because ``rank`` failed says: where to look for that rank's error
    (rank 0's lines are unmarked, and so are a Ray job's: Ray prefixes them its own way), or,
    when that rank printed nothing at all (killed by SIGKILL before a line, as the kernel's
    out-of-memory killer does), how it ended, in words, since there are no lines to point at."""
    record = next((f for f in rank_failures() if f["rank"] == rank), None)
    if record is not None and record["printed"] is False:
        return f"stopped: rank {rank} failed: {record['error']}; it printed nothing"
    marked = rank != "0" and not os.environ.get("GPUQUEUE_RAY_WORKER")
    return f"stopped: rank {rank} failed (see " + (f"[rank{rank}] above)" if marked else "its error above)")


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Stopped|Warning)): (.*)$", re.S)


def _error_record(rank: str, error: str, tail: Optional[list[str]] = None) -> dict[str, Any]:
    """error.json for a failed rank: ``ValueError: text`` split as a cell job's is, with the
    rank's last lines on stderr as its traceback."""
    m = _EXCEPTION_LINE.match(error)
    kind, message = (m.group(1), m.group(2)) if m else ("", error)
    return {"type": kind, "message": message, "traceback": tail_text(tail or []) or "", "rank": rank}


def _failed_ranks(e: Any) -> str:
    """The line that replaces torchrun's report of a ``ChildFailedError`` (named after this
    wrapper, not the job): which rank failed and how; error.json says it too where no rank
    wrote one (a command job)."""
    own = rank_failures()
    tail: list[str] = []
    if own:
        first = own[0]
        rank, error, tail = first["rank"], first["error"], first["tail"]
    else:  # a rank killed before it could say: torchrun's view
        codes = {str(r): f.exitcode for r, f in e.failures.items()}
        by_time = sorted(e.failures.items(), key=lambda rf: rf[1].timestamp)
        rank = str(next((r for r, f in by_time if f.exitcode > 0), by_time[0][0]))
        error = exit_words(codes[rank])
    return report_failure(rank, error, any(str(r) != rank for r in e.failures), tail=tail)


def report_failure(rank: str, error: str, others: bool, record: Optional[dict[str, Any]] = None,
                   tail: Optional[list[str]] = None) -> str:
    """The launcher's line for a failed rank; error.json says it too where no rank wrote one
    (``record``: the one a rank wrote elsewhere, a Ray rank's scratch folder; ``tail``: the
    rank's last lines on stderr, error.json's traceback)."""
    adir = os.environ.get("GPUQUEUE_ATTEMPT_DIR")
    if adir and not os.path.exists(os.path.join(adir, "error.json")):
        try:
            tmp = os.path.join(adir, ".error.json.tmp")
            with open(tmp, "w") as f:
                json.dump(dict(record, rank=rank) if record else _error_record(rank, error, tail), f)
            os.replace(tmp, os.path.join(adir, "error.json"))
        except (OSError, TypeError, ValueError):
            pass
    return f"rank {rank} failed: {error}" + ("; the other ranks were stopped" if others else "")


RANK_LINE = b"\x1b]gpuqueue-rank;"  # = gpuqueue.attempt.output.RANK_LINE (this module imports no runner)
RANK_PIECE = 3000  # bytes of text per marked line: a write under PIPE_BUF (4096) is not cut by another's


def _copy_marked(src: int, dst: int, rank: str, runner: bool, last: Optional[StderrTail] = None,
                 printed: Optional[threading.Event] = None) -> None:
    """Copy a rank's pipe to ``dst`` line by line, each line as the state its ``\r`` redraws
    end in. Under the runner each is one ``RANK_LINE`` record, which the runner shows as
    ``[rankN] text`` on a line of its own, even in the middle of a line rank 0 is writing (a
    progress bar); elsewhere (a terminal) it is written as ``[rankN] text``. ``last``: where the
    last lines go (a failing rank's error); ``printed``: set once a line was copied."""
    buf = b""
    while True:
        try:
            chunk = os.read(src, 65536)
        except InterruptedError:
            continue
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if not chunk or len(buf) > 65536:  # the end, or a line without end: written as it is
            lines, buf = lines + ([buf] if buf else []), b""
        out = bytearray()
        for raw in lines:
            text = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1]
            if last is not None:
                last.add(text.decode(errors="replace"))
            for i in range(0, max(len(text), 1), RANK_PIECE):
                piece = text[i : i + RANK_PIECE]
                out += (RANK_LINE + rank.encode() + b";" + piece if runner else f"[rank{rank}] ".encode() + piece) + b"\n"
        if out:
            if printed is not None:
                printed.set()
            try:
                os.write(dst, bytes(out))
            except OSError:
                pass  # the job's pipe is gone: the rest is dropped, the rank goes on
        if not chunk:
            break
    os.close(src)


def _copy_raw(src: int, dst: int, last: StderrTail) -> None:
    """Copy a pipe to ``dst`` as it comes, byte for byte (a progress bar's ``\r`` redraws
    stay live), keeping its last lines in ``last`` (each as the state its ``\r`` redraws end in)."""
    buf = b""
    while True:
        try:
            chunk = os.read(src, 65536)
        except InterruptedError:
            continue
        view = memoryview(chunk)
        while view:
            try:
                view = view[os.write(dst, view):]
            except InterruptedError:
                continue
            except OSError:
                break  # the job's pipe is gone: the rest is dropped, the rank goes on
        buf += chunk
        *lines, buf = buf.split(b"\n")
        if not chunk or len(buf) > 65536:
            lines, buf = lines + ([buf] if buf else []), b""
        for raw in lines:
            last.add(raw.rstrip(b"\r").rsplit(b"\r", 1)[-1].decode(errors="replace"))
        if not chunk:
            break
    os.close(src)


def _is_cell(argv: list[str]) -> bool:
    """A cell job's process (``python -m gpuqueue.job.jobmain``), which records its own error."""
    return argv[1:3] == ["-m", "gpuqueue.job.jobmain"]


def run_rank(argv: list[str]) -> int:
    """One torchrun rank. Rank 0's output is the job's, as a single process's would be (live
    progress bars included): a cell's rank 0 becomes the job's process (the cell records its own
    error); a command's writes its stdout there directly and its stderr through this process,
    byte for byte, which keeps its last lines for the error. Another rank N runs it with each
    line of its stdout and stderr marked ``[rankN] ``, so what it prints (its errors first of
    all) shows, told apart from rank 0's. torchrun's stop signal reaches the command (torchrun
    signals the rank's process group); this process waits for it and exits with its code. A
    command that fails on its own (no stop signal came) is recorded first
    (:func:`record_failure`: its exit in words and its last lines on stderr): torchrun then
    stops the other ranks, which tell that apart from a stop the queue asked for."""
    rank = os.environ.get("RANK", "0")
    cell = _is_cell(argv)
    # A cell's process installs its stop handler once Python and gpuqueue are loaded: torchrun's
    # SIGTERM (another rank failed at once) before that ended it without a word, and rank 0's
    # `stopped: rank N failed` line was missing. It starts with SIGTERM blocked; its handler
    # unblocks it (gpuqueue.job.channel.install_stop_handler), and a stop that came is told then.
    if rank == "0" and cell:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            print(f"gpuqueue: cannot start {argv[0]}: {e}", file=sys.stderr)
            return 127
    stopped: list[int] = []

    def on_stop(sig: int, _frame: Any) -> None:  # the command gets it too; this copies its last words
        stopped.append(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_stop)
    runner = bool(os.environ.get("GPUQUEUE_ATTEMPT_DIR"))  # started by gpuqueue's runner
    marked = rank != "0"
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if cell else None  # (as above)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE if marked else None, stderr=subprocess.PIPE)
    except OSError as e:
        print(f"{f'[rank{rank}] ' if marked else ''}gpuqueue: cannot start {argv[0]}: {e}", file=sys.stderr)
        return 127
    finally:
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # this wrapper's own on_stop gets it now
    assert proc.stderr is not None
    last_err = StderrTail()
    printed = threading.Event()  # a marked rank wrote a line ([rankN] lines the others may point at)
    if marked:
        assert proc.stdout is not None
        copies = [threading.Thread(target=_copy_marked, args=(f.fileno(), n, rank, runner, last, printed),
                                   daemon=True)
                  for f, n, last in ((proc.stdout, 1, None), (proc.stderr, 2, last_err))]
    else:
        copies = [threading.Thread(target=_copy_raw, args=(proc.stderr.fileno(), 2, last_err), daemon=True)]
    for t in copies:
        t.start()
    while True:
        try:
            code = proc.wait()
            break
        except InterruptedError:
            continue
    for t in copies:
        t.join(timeout=5)  # a child of the command may hold the pipes: not waited for longer
    if code != 0 and not stopped and not stop_requested_by_queue():  # it failed on its own: say so first
        record_failure(rank, code, rank_error(code, last_err.lines()), tail=last_err.lines(),
                       printed=printed.is_set() if marked else None)
    return code if code >= 0 else 128 - code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: run the job's command as one rank, with torchrun's environment."""
    import ray.train
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    addr: list[Optional[str]] = [None]  # rank 0's host:port, broadcast to the others
    if rank == 0:
        addr = [f"{socket.gethostbyname(socket.gethostname())}:{_free_port()}"]
    if dist.is_initialized():
        dist.broadcast_object_list(addr, src=0)
    host, port = str(addr[0]).rsplit(":", 1)
    env = dict(os.environ)
    env.update(config["env"])
    env.pop("GPUQUEUE_EVENT_FD", None)
    env.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(ctx.get_local_rank()),
        LOCAL_WORLD_SIZE=str(ctx.get_local_world_size()), NODE_RANK=str(ctx.get_node_rank()),
        MASTER_ADDR=host, MASTER_PORT=port, GPUQUEUE_RAY_WORKER="1",
    )
    # its lines marked with its rank: the launcher shows them as the job's, and Ray's own elsewhere
    proc = subprocess.Popen(config["argv"], env=env, cwd=config.get("cwd") or None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    last_err = StderrTail()
    printed = threading.Event()
    copies = [threading.Thread(target=_copy_marked, args=(f.fileno(), n, str(rank), True, last, printed),
                               daemon=True)
              for f, n, last in ((proc.stdout, 1, None), (proc.stderr, 2, last_err))]
    for t in copies:
        t.start()
    code = proc.wait()
    for t in copies:
        t.join(timeout=5)
    if code != 0:
        if not stop_requested_by_queue():  # the others then say why they were stopped
            record_failure(str(rank), code, rank_error(code, last_err.lines()), tail=last_err.lines(),
                           printed=printed.is_set())
        raise RuntimeError(f"rank {rank} exited with code {code}")


def run_ray(workers: int, gpus_per_worker: int, argv: list[str]) -> int:
    """Run ``argv`` as ``workers`` ranks through Ray Train's ``TorchTrainer``.

    Connects to ``GPUQUEUE_RAY_ADDRESS`` (or ``RAY_ADDRESS``) if set, else starts a local Ray
    cluster on this machine with ``GPUQUEUE_RAY_CPUS`` CPUs (default: one per worker + 1)."""
    _detach_event_pipe()
    from .raynodes import placement_from_env, run_pinned

    placement = placement_from_env()
    if placement is not None:  # cluster mode: the nodes and GPUs the scheduler chose
        return run_pinned(placement, argv, os.environ.get("GPUQUEUE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS"))
    address = os.environ.get("GPUQUEUE_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
    adir = os.environ.get("GPUQUEUE_ATTEMPT_DIR", os.getcwd())
    # a one-node Ray of the job's own: in a private folder, answering only with a token of the
    # attempt's (set before Ray is imported: it reads RAY_AUTH_MODE once)
    own = None if address else own_ray_folder(adir)
    try:
        return _train(workers, gpus_per_worker, argv, address, adir, own)
    finally:
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


def _train(workers: int, gpus_per_worker: int, argv: list[str], address: Optional[str], adir: str,
           folder: Optional[str]) -> int:
    """:func:`run_ray` past the choice of the Ray: ``address``, else one of its own here in
    ``folder`` (:func:`own_ray_folder`)."""
    from .raylogs import RAY_LOG_DRAIN_S, RayOutput
    from .raynodes import no_token_auth

    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:
        print(f"gpuqueue: a job on several nodes runs through Ray Train, which is not usable here "
              f"({e}). Install it in the job's environment: pip install 'ray[train]'", file=sys.stderr)
        return 1
    if not address and (why := no_token_auth(ray)):
        print(why, file=sys.stderr)  # before its Ray starts
        return 1

    use_gpu = gpus_per_worker > 0 and _cuda_available()
    keep = {k: v for k, v in os.environ.items() if k.startswith(("GPUQUEUE_", "CUDA_", "PYTHON"))}
    keep.pop("GPUQUEUE_EVENT_FD", None)
    output = RayOutput(adir, runner=bool(os.environ.get("GPUQUEUE_ATTEMPT_DIR")))
    output.before_init()  # Ray's own messages to ray.log in the attempt folder, not the job's output
    init_kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                               "configure_logging": not output.logging_to_file}
    if address:
        init_kw["address"] = address
    else:  # a one-node cluster of this job's own, on the GPUs the scheduler gave it
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        init_kw["num_cpus"] = int(os.environ.get("GPUQUEUE_RAY_CPUS", str(workers + 1)))
        init_kw["num_gpus"] = len(visible) if use_gpu else 0
        # its sessions, logs and sockets in the private folder, not in /tmp/ray (folders of mode
        # 777, in which any local user may replace a socket; logs, the job's output among them, 644)
        init_kw["_temp_dir"] = os.path.join(folder or adir, "ray")
    for attempt in range(1, 4):
        try:
            ray.init(**init_kw)
            break
        except Exception as e:  # noqa: BLE001 - tell the user what failed, not Ray's traceback
            # a busy node can miss Ray's fixed ~15 s limit for its agents to start: try again
            ray.shutdown()
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            print(f"gpuqueue: could not start or reach {where} (try {attempt} of 3): {e}", file=sys.stderr)
            if attempt == 3:
                return 1
    output.after_init()
    stop = {"asked": False}

    def on_term(*_: Any) -> None:  # the ranks see control.json; just wait for them
        stop["asked"] = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"argv": argv, "env": keep, "cwd": os.getcwd()},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1}),
            run_config=RunConfig(name="gpuqueue", storage_path=os.path.join(os.path.abspath(adir), "ray")),
        )
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - TrainingFailedError wraps the rank's error
        own = [] if stop["asked"] else rank_failures()
        time.sleep(RAY_LOG_DRAIN_S)  # the ranks' last lines come to the driver a moment late: before this
        if output.installed:
            print(f"gpuqueue: Ray's own messages (its tracebacks included) are in {output.path}", file=sys.stderr)
        if own:  # a rank failed on its own: it, not Ray's traceback
            first = own[0]
            print(f"gpuqueue: {report_failure(first['rank'], first['error'], workers > 1, tail=first['tail'])}",
                  file=sys.stderr)
        else:
            print(f"gpuqueue: the Ray Train job failed: {_first_line(e)}", file=sys.stderr)
        return 143 if stop["asked"] else 1
    finally:
        ray.shutdown()
        output.close()
    return 143 if stop["asked"] else 0


RAY_FOLDER_NOTE = "ray-folder"  # in the attempt folder: the path of the job's own Ray folder


def own_ray_folder(adir: Optional[str] = None) -> str:
    """A private folder (mode 700, short: Ray's socket paths are bounded) for the job's own
    one-node Ray, holding a fresh random ``token`` that Ray is made to ask for
    (``RAY_AUTH_MODE=token``; the file's path, never the token, in this process's environment,
    which Ray's processes inherit). Left alone, Ray 2.60 writes a token of its own to
    ``~/.ray/auth_token`` readable by all (umask 022), which every later Ray of that user takes
    up, and Rays before 2.52 answer anyone. Ray is also told to use the loopback address only.
    The caller removes the folder; its path is written to :data:`RAY_FOLDER_NOTE` in ``adir``, the
    attempt folder, so that the runner removes it where the caller could not (killed:
    :func:`remove_left_ray_folder`)."""
    import secrets
    import tempfile

    base = "/tmp" if os.access("/tmp", os.W_OK | os.X_OK) else None
    folder = tempfile.mkdtemp(prefix="gqr-", dir=base)
    if adir:
        with open(os.path.join(adir, RAY_FOLDER_NOTE), "w") as f:
            f.write(folder)
    token = os.path.join(folder, "token")
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    # a one-node Ray on the loopback address only (what Ray does on macOS and Windows): else its
    # servers listen on every address and its autoscaler serves metrics there with no token; and
    # those metrics on a free port, not Ray's fixed 44217, which a second such job could not take
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", AUTOSCALER_METRIC_PORT="0")
    return folder


def remove_left_ray_folder(attempt_dir: str) -> Optional[str]:
    """Remove the job's own Ray folder where its launcher left it (killed past its grace, it
    removes nothing): called by the runner, which runs as the job's user, once the job's
    processes are gone. Only what :func:`own_ray_folder` makes is removed: a folder ``gqr-*`` of
    this user's (not a link) in the temporary folder. Returns its path, or None where none was left."""
    try:
        with open(os.path.join(attempt_dir, RAY_FOLDER_NOTE)) as f:
            path = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return None
    import tempfile

    parent, name = os.path.split(path)
    if os.path.normpath(path) != path or not name.startswith("gqr-") or parent not in ("/tmp", tempfile.gettempdir()):
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None  # removed by the launcher
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return None
    shutil.rmtree(path, ignore_errors=True)
    return path


def _first_line(e: BaseException) -> str:
    """An exception's first line (Ray's errors go on for pages)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m gpuqueue.job.distributed torchrun --nproc N -- CMD...`` or
    ``... ray --workers W [--gpus-per-worker G] -- CMD...``."""
    p = argparse.ArgumentParser(prog="python -m gpuqueue.job.distributed")
    sub = p.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("torchrun")
    t.add_argument("--nproc", type=int, required=True)
    rk = sub.add_parser("rank")
    r = sub.add_parser("ray")
    r.add_argument("--workers", type=int, required=True)
    r.add_argument("--gpus-per-worker", type=int, default=1)
    for sp in (t, r, rk):
        sp.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args(sys.argv[1:] if argv is None else argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        p.error("give the command to run after --")
    if a.mode == "torchrun":
        return run_torchrun(a.nproc, cmd)
    if a.mode == "rank":
        return run_rank(cmd)
    return run_ray(a.workers, a.gpus_per_worker, cmd)


if __name__ == "__main__":
    sys.exit(main())
