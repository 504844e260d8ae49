"""The runner: one small supervisor process per job attempt.

``python -m gpuqueue.attempt.runner ATTEMPT_DIR`` reads ``launch.json``, starts the job process in its
own process group with ``CUDA_VISIBLE_DEVICES`` set (and, where ``launch.json`` names a user,
under that user's uid/gid with no supplementary groups and umask 077, and where it says
``private_tmp``, in namespaces of its own: ``gpuqueue.attempt.privtmp``), and writes everything the
attempt says into ``events.jsonl``: stdout and stderr line by line as they are printed, and the
structured events the job-side API sends over the pipe named by ``GPUQUEUE_EVENT_FD`` (or, from
processes without the pipe, appends to the job's own ``events.jsonl``). Of those it keeps only
the job-side types (``channel.JOB_EVENT_TYPES``): a job cannot write the runner's ``exit``,
``runner`` or ``state`` records. It ends with an ``exit`` record and ``exit.json``.

It runs in a session of its own, so it outlives the Jupyter server (or Celery worker) that
started it; whoever restarts simply goes on reading ``events.jsonl`` from where it stopped.
Stop requests arrive as ``control.json`` plus SIGUSR1: the runner sends SIGTERM to the job's
process group, waits the grace period, then SIGKILL. It is the subreaper of the job's processes,
so what the job leaves outside that group (a session of its own) is its child, killed at the end.
A runner that is killed itself cannot do that: the embedded queue runs each runner under a guard
(``--guard``, ``gpuqueue.attempt.guard``) that does, the cluster worker's fork server does it there.

It imports nothing heavy, so a job starts fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

from ..job.channel import JOB_EVENT_TYPES
from . import launchfail, orphans, privtmp
from .jobdir import OwnedDir, load_json
from .output import MAX_OUTPUT_BYTES, OutputPump
from .resolve import resolve_path
from .warmjob import WarmJob

GUARD_GONE_SIGNAL = signal.SIGUSR2  # sent to a guarded runner when its guard ends (gpuqueue.attempt.guard)

MAX_EVENT = 1_048_576  # a job-side event record longer than this is dropped
JOB_EVENTS_POLL_S = 0.1  # how often the job's own events.jsonl is read (identity mode)
MAX_DRAIN = 4 * 1024 * 1024  # bytes of it read per pass of the main loop (which answers stop requests)
REAP_EVERY_S = 2.0  # how often the job's orphans that ended are reaped (gpuqueue.attempt.orphans)


class EventWriter:
    """Appends JSON records to events.jsonl; thread-safe; each record flushed at once.

    What the job makes (its output lines and job-side events, :meth:`write_job`) is kept up to
    ``max_job_bytes`` per attempt: every record is copied into the store (SQLite, or Redis in a
    cluster, shared by every user), so a job that prints without end would fill it and stop
    the queue for everyone. Past the limit its records are dropped, after one stderr line that
    says so; the runner's own records (start, stop, exit) are always written."""

    def __init__(self, path: Path, max_job_bytes: Optional[int] = None):
        self._f: IO[str] = open(path, "a", buffering=1)
        self._lock = threading.Lock()
        self.max_job_bytes = max_job_bytes
        self.job_bytes = 0
        self.dropped = 0  # the job's records left out past the limit

    def write(self, type_: str, data: dict[str, Any], t: Optional[float] = None) -> None:
        """Write one record: ``{"t": time, "type": ..., "data": {...}}``."""
        line = json.dumps({"t": t or time.time(), "type": type_, "data": data})
        with self._lock:
            self._f.write(line + "\n")

    def write_job(self, type_: str, data: dict[str, Any], t: Optional[float] = None) -> None:
        """Write one record the job made, within the attempt's ``max_job_bytes``."""
        if self.dropped:
            with self._lock:
                self.dropped += 1
            return
        line = json.dumps({"t": t or time.time(), "type": type_, "data": data})
        with self._lock:
            if self.dropped:  # another thread passed the limit meanwhile
                self.dropped += 1
                return
            if self.max_job_bytes is not None and self.job_bytes + len(line) + 1 > self.max_job_bytes:
                self.dropped += 1
                mb = self.max_job_bytes / 2**20
                notice = {"stream": "stderr", "line": (
                    f"gpuqueue: this attempt's output passed {mb:.0f} MB: its further lines, metrics and "
                    f"events are not kept (the queue's store is shared by every user). Write large logs to "
                    f"a file in $GPUQUEUE_JOB_DIR; the admin sets the limit (GPUQUEUE_MAX_OUTPUT_MB)")}
                self._f.write(json.dumps({"t": time.time(), "type": "log", "data": notice}) + "\n")
                return
            self.job_bytes += len(line) + 1
            self._f.write(line + "\n")

    def close(self) -> None:
        """Flush and close the file."""
        with self._lock:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


def job_event(raw: bytes, job_dir: Optional[str] = None) -> Optional[tuple[str, dict[str, Any], Optional[float]]]:
    """One record a job sent, as (type, data, time), or None if it is not a job-side event
    (a torn line, a foreign one, or a type only the runner may write: ``exit``, ``runner``,
    ``state``, ``log``). A checkpoint record says whether its path lies in the job's own folder
    (``in_job_folder``): one that does not is the job's claim, nothing more."""
    if len(raw) > MAX_EVENT:
        return None
    try:
        rec = load_json(raw)  # not nested over MAX_DEPTH levels (json's RecursionError ended the runner)
        type_ = rec["type"]
        t = rec.get("t")
        data = rec.get("data", {})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if type_ not in JOB_EVENT_TYPES or not isinstance(data, dict):
        return None
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < 1e11:
        t = None
    if type_ == "checkpoint":
        data = dict(data, in_job_folder=_inside(data.get("path"), job_dir))
    return str(type_), data, t


def _inside(path: Any, folder: Optional[str]) -> bool:
    if not isinstance(path, str) or not folder or "://" in path or "\0" in path:
        return False  # a NUL byte: the open raises ValueError (realpath's ended the runner)
    try:
        real, root = resolve_path(path), os.path.realpath(folder)
    except (ValueError, OSError):
        return False
    if real is None:
        return False
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _pump_events(fd: int, out: EventWriter, job_dir: Optional[str]) -> None:
    """Copy the job-side API's JSON records (metrics, progress, checkpoints) into the log."""
    with os.fdopen(fd, "rb") as f:
        while True:
            raw = f.readline(MAX_EVENT + 1)
            if not raw:
                break
            if not raw.endswith(b"\n") and len(raw) > MAX_EVENT:
                while raw and not raw.endswith(b"\n"):  # skip the rest of an oversized line
                    raw = f.readline(MAX_EVENT + 1)
                continue
            ev = job_event(raw, job_dir)
            if ev is not None:
                out.write_job(ev[0], ev[1], ev[2])


class JobEventsFile:
    """The job's own ``events.jsonl`` (identity mode): what processes without the runner's pipe
    (torchrun ranks, Ray workers) append. Opened once, without following links, and read from
    where the last read stopped; only job-side records pass.

    The job owns the file, so it may make it anything: a sparse file of terabytes reads as zeros
    for hours. The runner reads it in its main loop, which also answers stop requests and kills
    the job after the grace period, so each :meth:`drain` reads at most ``MAX_DRAIN`` bytes, and
    the whole file no further than ``limit`` (the attempt's output limit: past it, nothing the
    job writes is kept anyway)."""

    def __init__(self, folder: OwnedDir, job_dir: Optional[str], limit: int = MAX_OUTPUT_BYTES):
        self.fd = folder.open_file("events.jsonl")
        self.job_dir = job_dir
        self.buf = b""
        self.left = limit  # bytes it may still read

    def drain(self, out: EventWriter, budget: int = MAX_DRAIN) -> bool:
        """Copy the complete new lines, reading at most ``budget`` bytes; True if it stopped
        with more maybe left to read."""
        if self.fd is None:
            return False
        while budget > 0:
            if self.left <= 0:
                out.write("log", {"stream": "stderr", "line": (
                    "gpuqueue: the job's own events.jsonl passed this attempt's output limit: the rest "
                    "of it is not read")})
                self.close()
                return False
            chunk = os.read(self.fd, min(1 << 20, budget, self.left))
            if not chunk:
                return False
            budget -= len(chunk)
            self.left -= len(chunk)
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            if len(self.buf) > MAX_EVENT:
                self.buf = b""  # an endless line: dropped
            for raw in lines:
                ev = job_event(raw, self.job_dir)
                if ev is not None:
                    out.write_job(ev[0], ev[1], ev[2])
        return True

    def close(self) -> None:
        """Close the file."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _max_output(launch: dict[str, Any]) -> int:
    """The attempt's limit on what the job's records may take (``launch.json``'s
    ``max_output_bytes``; :data:`MAX_OUTPUT_BYTES` where it has none or a bad one)."""
    v = launch.get("max_output_bytes")
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else MAX_OUTPUT_BYTES


IDENTITY_HINT = ": the job's identity must be able to run the interpreter and enter the working folder"


def _enter(cwd: str, who: str, report_fd: int) -> Any:
    """The ``preexec_fn`` that enters ``cwd`` in the job's process once it runs as the job's
    user; on failure it says why on the job's stderr, writes the error's number to
    ``report_fd`` (the runner reads it: :meth:`Runner._cwd_error`) and exits 127."""

    def enter() -> None:
        try:
            os.chdir(cwd)
        except OSError as e:
            os.write(2, f"gpuqueue: cannot start the job{who}: {e}{IDENTITY_HINT}\n".encode(errors="replace"))
            os.write(report_fd, f"{e.errno}:{e.strerror}".encode(errors="replace"))
            os._exit(127)

    return enter


class Runner:
    """Supervises one attempt: start, watch, stop on request, record the end."""

    def __init__(self, attempt_dir: Path, warm: Optional[tuple[WarmJob, tuple[int, ...]]] = None):
        self.dir = attempt_dir
        # a job interpreter started ahead on these pipes (read/write ends of stdout, stderr, events)
        self.warm: Optional[WarmJob] = warm[0] if warm is not None else None
        self.warm_fds: tuple[int, ...] = warm[1] if warm is not None else ()
        self.launch: dict[str, Any] = json.loads((attempt_dir / "launch.json").read_text())
        self.out = EventWriter(attempt_dir / "events.jsonl", _max_output(self.launch))
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.stop_reason: Optional[str] = None
        self.kill_at: Optional[float] = None
        self._wake = threading.Event()
        user = self.launch.get("user")
        self.user: Optional[dict[str, Any]] = user if isinstance(user, dict) else None
        self.job_dir: Optional[str] = self.launch.get("job_dir")
        self.reaper = False  # this runner reaps the job's orphans (gpuqueue.attempt.orphans)
        self.own: Optional[OwnedDir] = None  # the job's attempt folder, where it runs as its own user
        self.own_error: Optional[OSError] = None
        self._cwd_failed: Optional[dict[str, Any]] = None  # the job's process could not enter its folder
        self._own_tmp = False  # the job runs with /tmp, /var/tmp and /dev/shm of its own (privtmp)
        if self.user is not None and self.job_dir and self.launch.get("attempt_dir"):
            jd, ad = Path(self.job_dir), Path(self.launch["attempt_dir"])
            try:
                self.own = OwnedDir(jd.parent, [jd.name, ad.name], int(self.user["uid"]), int(self.user["gid"]))
            except OSError as e:  # gone, or replaced by a link: the attempt fails, with the reason
                self.own_error = e

    def run(self) -> int:
        """Start the job, wait for it, write exit records. Returns the job's exit code."""
        signal.signal(signal.SIGUSR1, lambda *_: self._wake.set())
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(GUARD_GONE_SIGNAL, self._on_guard_gone)
        self.reaper = orphans.become_subreaper()  # the job's orphans stay in reach (gpuqueue.attempt.orphans)
        if self.own_error is not None:
            self.out.write("log", {"stream": "stderr", "line": f"gpuqueue: cannot open the attempt's folder: {self.own_error}"})
            return self._finish(127, time.time(), self._launch_error(launchfail.FOLDER, self.own_error))
        if self.warm is not None:
            out_r, out_w, err_r, err_w, ev_r, ev_w = self.warm_fds
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            ev_r, ev_w = os.pipe()
        env = dict(self.launch.get("env", {}))  # the job's whole environment (see gpuqueue.attempt.launch)
        env["GPUQUEUE_EVENT_FD"] = str(ev_w)
        env["PYTHONUNBUFFERED"] = "1"
        started = time.time()
        if self.warm is not None:
            self.proc = self.warm.take(self.launch, env)
            self.warm = None
            if self.proc is None:  # not for this launch: a cold start on fresh pipes
                for fd in self.warm_fds:
                    os.close(fd)
                return self.run()
            warm = True
        else:
            warm = False
            cwd = self.launch.get("cwd") or None
            as_user: dict[str, Any] = {}
            report_r = report_w = -1
            if self.user is not None and cwd:
                # the working folder is entered as the job's user, after the switch: a chdir done as
                # root would hand the job a folder it may not reach (e.g. inside a home of mode 700)
                report_r, report_w = os.pipe()
                as_user = {"preexec_fn": _enter(cwd, self._who(), report_w)}
            if self.user is not None:
                as_user.update({"user": int(self.user["uid"]), "group": int(self.user["gid"]), "extra_groups": [],
                                "umask": 0o077})
            if self.user is not None:
                self._private_tmp()
            entered, cwd = cwd, (None if self.user is not None else cwd)
            try:
                self.proc = subprocess.Popen(
                    self.launch["argv"],
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    pass_fds=(ev_w,),
                    start_new_session=True,
                    **as_user,
                )
            except OSError as e:
                for fd in (out_r, out_w, err_r, err_w, ev_r, ev_w, report_r, report_w):
                    if fd >= 0:
                        os.close(fd)
                stage = launchfail.CWD if cwd and e.filename == cwd else launchfail.EXEC
                rec = self._launch_error(stage, e)
                hint = IDENTITY_HINT if self.user and isinstance(e, PermissionError) else ""
                hint = f": {launchfail.detail(rec)}" if launchfail.detail(rec) else hint
                self.out.write("log", {"stream": "stderr", "line": f"gpuqueue: cannot start the job{self._who()}: {e}{hint}"})
                return self._finish(127, started, rec)
            if report_r >= 0:
                os.close(report_w)
                self._cwd_failed = self._cwd_error(report_r, entered)
        for fd in (out_w, err_w, ev_w):
            os.close(fd)
        self.out.write("runner", {"pid": self.proc.pid, "runner_pid": os.getpid(), "warm": warm})
        output = OutputPump(self.out, [(out_r, "stdout"), (err_r, "stderr")])
        pumps = [
            threading.Thread(target=output.run, daemon=True),
            threading.Thread(target=_pump_events, args=(ev_r, self.out, self.job_dir), daemon=True),
        ]
        job_events = JobEventsFile(self.own, self.job_dir, _max_output(self.launch)) if self.own is not None else None
        for p in pumps:
            p.start()
        proc = self.proc
        exited = threading.Event()

        # wake the loop the moment the job exits (no polling delay before the exit record). The
        # main process is not reaped until the last kill of its group below: a zombie holds its
        # pid, so that kill (as root) cannot reach a process that took the pid meanwhile
        def wake_on_exit() -> None:
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # reaped already
                pass
            exited.set()
            self._wake.set()

        threading.Thread(target=wake_on_exit, daemon=True).start()
        reaped_at = time.monotonic()
        while not exited.is_set():
            self._wake.wait(JOB_EVENTS_POLL_S if job_events is not None else 0.2)
            self._wake.clear()
            if self.reaper and time.monotonic() - reaped_at > REAP_EVERY_S:
                reaped_at = time.monotonic()
                orphans.reap_ended(self.proc.pid)
            if job_events is not None:
                job_events.drain(self.out)
            self._check_control()
            if self.kill_at is not None and time.time() >= self.kill_at:
                self._signal_group(signal.SIGKILL)
                self.kill_at = None
        for p in pumps:  # not waited for once the guard is gone: what holds the pipes is killed below
            p.join(timeout=0 if getattr(self, "_guard_gone", False) else 5)
        # children that outlived the job's main process must not keep its GPUs
        self._signal_group(signal.SIGKILL)
        self.proc.wait()  # now its pid may go
        if self.reaper:
            left = orphans.end_all()
            if left:
                self.out.write("log", {"stream": "stderr", "line": (
                    f"gpuqueue: ended {left} processes the job left running after it ended")})
        if self.user is None:  # the job ran as this runner's user: what its own Ray left
            from ..job.distributed import remove_left_ray_folder

            if (ray_folder := remove_left_ray_folder(str(self.dir))) is not None:
                self.out.write("log", {"stream": "stderr", "line": (
                    f"gpuqueue: removed the folder of the job's own Ray, {ray_folder}, which its launcher left")})
        for p in pumps:  # their pipes close with their last holders: the lines being written end
            p.join(timeout=2)
        if job_events is not None:
            while job_events.drain(self.out):  # what is left, up to the output limit
                pass
            job_events.close()
        code = self.proc.returncode
        tail = output.stderr_tail.lines() if code != 0 and self.stop_reason is None else None
        return self._finish(code, started, self._cwd_failed, tail)

    def _private_tmp(self) -> None:
        """Enter the job's own ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (``gpuqueue.attempt.privtmp``)
        where ``launch.json`` asks for them (``private_tmp``: the identity's folder, the bound of
        its ``/dev/shm``, and ``links``, the job's Ray folder as the job names it and where it is
        on the node); where that fails, the job runs with the node's (its Ray folder linked
        there: ``privtmp.link_instead``), said in ``runner.log``."""
        want = self.launch.get("private_tmp")
        if not isinstance(want, dict):
            return
        try:
            privtmp.enter(str(want["tmp"]), int(want["shm_bytes"]))
            self._own_tmp = True
        except (OSError, KeyError, TypeError, ValueError) as e:
            print(f"gpuqueue runner: the job runs with the node's /tmp and /dev/shm, not its own: {e}", file=sys.stderr)
            try:  # a job on several nodes: its Ray's folder, named as in its own /tmp (gpuqueue.cluster.rayjob)
                privtmp.link_instead({str(k): str(v) for k, v in (want.get("links") or {}).items()})
            except (OSError, AttributeError) as e:
                print(f"gpuqueue runner: cannot link the job's Ray folder into the node's /tmp: {e}", file=sys.stderr)

    def _cwd_error(self, report_r: int, cwd: Optional[str]) -> Optional[dict[str, Any]]:
        """The launch error the job's process reported on ``report_r`` before its exec (it could
        not enter ``cwd`` as the job's user), or None if it reached its exec. The pipe's other
        ends are closed by then (at the exec, or at the exit), so the read cannot block."""
        with os.fdopen(report_r, "rb") as f:
            said = f.read(4096).decode(errors="replace")
        if not said:
            return None
        num, _, text = said.partition(":")
        err = OSError(int(num) if num.isdigit() else 0, text)
        return self._launch_error(launchfail.CWD, err, cwd)

    def _launch_error(self, stage: str, e: OSError, path: Optional[str] = None) -> dict[str, Any]:
        """The exit record's ``launch_error`` (see :mod:`gpuqueue.attempt.launchfail`)."""
        node = (self.launch.get("env") or {}).get("GPUQUEUE_NODE")
        rec = launchfail.record(stage, e, path, self.user, node, (self.launch.get("env") or {}).get("PATH"))
        if self._own_tmp:  # a path under /tmp... was looked up in the job's own (its message says so)
            rec["own_tmp"] = True
        return rec

    def _who(self) -> str:
        return f" as uid {self.user['uid']} (user {self.user['name']})" if self.user else ""

    def _on_sigterm(self, *_: Any) -> None:
        # only set flags here: the main loop does the work (no locks taken in a signal handler)
        self._terminated = True
        self._wake.set()

    def _on_guard_gone(self, *_: Any) -> None:
        self._guard_gone = True
        self._wake.set()

    def _check_control(self) -> None:
        if getattr(self, "_guard_gone", False) and self.stop_reason is None:
            # nothing would end the job's processes if this runner died too: end them now
            self._request_stop("terminated", 0.0)
            self.kill_at = time.time()
        if getattr(self, "_terminated", False) and self.stop_reason is None:
            self._request_stop("terminated", 10.0)
        try:
            ctl = json.loads((self.dir / "control.json").read_text())
        except (FileNotFoundError, ValueError):
            return
        if self.stop_reason is None:
            self._request_stop(ctl.get("reason", "cancelled"), float(ctl.get("grace_s", 10.0)))

    def _request_stop(self, reason: str, grace_s: float) -> None:
        if self.stop_reason is not None or self.proc is None:
            return
        self.stop_reason = reason
        self.out.write("state", {"stopping": reason, "grace_s": grace_s})
        if self.own is not None:  # the job cannot read the records: its copy of the request
            try:
                self.own.write("control.json", json.dumps({"reason": reason, "grace_s": grace_s}).encode())
            except OSError as e:
                print(f"gpuqueue runner: cannot copy the stop request to the job's folder: {e}", file=sys.stderr)
        self._signal_group(signal.SIGTERM)
        self.kill_at = time.time() + grace_s

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _finish(self, code: int, started: float, launch_error: Optional[dict[str, Any]] = None,
                stderr_tail: Optional[list[str]] = None) -> int:
        """Write the ``exit`` record and ``exit.json`` (with ``launch_error`` when the job could
        not start: :mod:`gpuqueue.attempt.launchfail`; ``stderr_tail``, the job's last lines on
        stderr, when it failed on its own: :mod:`gpuqueue.attempt.failtext`); returns ``code``."""
        record: dict[str, Any] = {"exit_code": code, "stop_reason": self.stop_reason, "started": started,
                                  "ended": time.time()}
        if launch_error is not None:
            record["launch_error"] = launch_error
        if stderr_tail:
            record["stderr_tail"] = stderr_tail
        if getattr(self, "_guard_gone", False):
            record["error"] = GUARD_GONE
            self.out.write("warning", {"message": GUARD_GONE})  # in the job's stream, where the user looks
        self.out.write("exit", record)
        self.out.close()
        tmp = self.dir / "exit.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.dir / "exit.json")
        return code


GUARD_GONE = ("the guard of this attempt's runner (the process the queue watches: the attempt's pid) ended before "
              "the job, so the runner ended the job at once (nothing would end its processes if the runner died "
              "too). The attempt counts as lost: the queue starts the job again, not counting a failure")


def main(argv: Optional[list[str]] = None, report_fd: Optional[int] = None) -> int:
    """Entry point: ``python -m gpuqueue.attempt.runner ATTEMPT_DIR``.

    ``python -m gpuqueue.attempt.runner -`` is a *warm* runner: started ahead of time, it waits for the
    attempt folder on stdin, so a launch costs a write instead of an interpreter start. Its
    stderr then goes to the attempt's ``runner.log``. EOF on stdin: it exits, having run nothing.
    A first line that is a JSON object is a ``gpuqueue.attempt.warmjob.warm_spec``: the runner
    starts the job's interpreter at once, before the attempt folder comes.

    ``python -m gpuqueue.attempt.runner --guard ...`` runs the runner under a guard
    (``gpuqueue.attempt.guard``: the embedded queue's runners), which ends what the job left if
    the runner is killed; ``report_fd`` is the guard's pipe, where the attempt folder is written.
    """
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--guard"]:
        from .guard import guarded

        return guarded(lambda fd: main(args[1:], fd))
    if len(args) != 1:
        print("usage: python -m gpuqueue.attempt.runner ATTEMPT_DIR | -", file=sys.stderr)
        return 2
    target = args[0]
    warm: Optional[tuple[WarmJob, tuple[int, ...]]] = None
    if target == "-":
        target = sys.stdin.readline().strip()
        if target.startswith("{"):
            warm = _start_warm(json.loads(target))
            target = sys.stdin.readline().strip()
        if not target:
            if warm is not None:
                warm[0].discard()
            return 0
    if report_fd is not None:  # the guard learns the attempt folder (gpuqueue.attempt.guard)
        try:
            os.write(report_fd, os.fsencode(target))
        finally:
            os.close(report_fd)
    if target != args[0]:
        fd = os.open(os.path.join(target, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    return Runner(Path(target), warm).run()


def _start_warm(spec: dict[str, Any]) -> Optional[tuple[WarmJob, tuple[int, ...]]]:
    """A job interpreter started ahead on new pipes, or None if it cannot start (cold then)."""
    fds = (*os.pipe(), *os.pipe(), *os.pipe())  # out_r, out_w, err_r, err_w, ev_r, ev_w
    try:
        return WarmJob(spec, fds[1], fds[3], fds[5]), fds
    except (OSError, KeyError, TypeError, ValueError):
        for fd in fds:
            os.close(fd)
        return None


if __name__ == "__main__":
    sys.exit(main())
