"""The runner: one small supervisor process per job attempt.

``python -m gpuqueue.attempt.runner ATTEMPT_DIR`` reads ``launch.json``, starts the job process in its
own process group with ``CUDA_VISIBLE_DEVICES`` set (and, where ``launch.json`` names a user,
under that user's uid/gid with no supplementary groups and umask 077), and writes everything the
attempt says into ``events.jsonl``: stdout and stderr line by line as they are printed, and the
structured events the job-side API sends over the pipe named by ``GPUQUEUE_EVENT_FD`` (or, from
processes without the pipe, appends to the job's own ``events.jsonl``). Of those it keeps only
the job-side types (``channel.JOB_EVENT_TYPES``): a job cannot write the runner's ``exit``,
``runner`` or ``state`` records. It ends with an ``exit`` record and ``exit.json``.

It runs in a session of its own, so it outlives the Jupyter server (or Celery worker) that
started it; whoever restarts simply goes on reading ``events.jsonl`` from where it stopped.
Stop requests arrive as ``control.json`` plus SIGUSR1: the runner sends SIGTERM to the job's
process group, waits the grace period, then SIGKILL.

It imports nothing heavy, so a job starts fast.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

from ..job.channel import JOB_EVENT_TYPES
from . import launchfail
from .jobdir import OwnedDir
from .warmjob import WarmJob

PARTIAL_LINE_FLUSH_S = 0.5  # a line with no newline yet (a progress bar) is shown, transient, after this long
TRANSIENT_SLOW_AFTER = 1200  # after this many transient records of a stream (10 min of a bar) ...
TRANSIENT_SLOW_S = 5.0  # ... its line being written is shown this often
TRANSIENT_MAX_SHARE = 8  # transient records take at most this share (1/8) of the attempt's output limit
MAX_LINE = 16_384  # longer lines are cut (with a marker) so one line cannot flood the log
MAX_LINE_BYTES = 4 * MAX_LINE + 4  # what of a line being written is kept (a character is 1 to 4 bytes)
READ_ROUND_BYTES = 1 << 20  # what one wake-up reads of the pipes at most before it writes records
RANK_LINE = b"\x1b]gpuqueue-rank;"  # starts a whole line of another torchrun rank: RANK_LINE N;text\n
# (gpuqueue.job.distributed.run_rank writes them; the runner shows "[rankN] text" as a line of its own)
MAX_EVENT = 1_048_576  # a job-side event record longer than this is dropped
JOB_EVENTS_POLL_S = 0.1  # how often the job's own events.jsonl is read (identity mode)
MAX_OUTPUT_BYTES = 256 * 1024 * 1024  # of a job's records per attempt, unless launch.json says


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


class _Stream:
    """One of the job's output pipes and the line being written on it (``pending``: its bytes
    since the last ``\\n``, only the part after its last ``\\r`` kept)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.open = True
        self.pending = b""
        self.since = 0.0  # when the pending line began, or was last shown
        self.shown: Optional[bytes] = None  # what the last transient record of this line showed
        self.cut = False  # the pending line passed the length limit: the rest of it is dropped
        self.ended = False  # its line was ended for it (the job moved on): a "\n" next is that line's
        self.marked: Optional[bytes] = None  # a rank's line being read (RANK_LINE), up to its "\n"
        self.carry = b""  # the start of RANK_LINE at the end of the last read
        self.transients = 0

    def current(self) -> bytes:
        """The pending line as a terminal shows it: the text after its last ``\\r``."""
        return self.pending.rstrip(b"\r").rsplit(b"\r", 1)[-1]


class OutputPump:
    """Turns the job's stdout and stderr into ``log`` records in the job's own order.

    A record is a *final* line (``{"stream", "line"}``: part of the output for good) or a
    *transient* one (``"transient": true``): the line being written, shown for liveness while a
    progress bar redraws it with ``\\r`` (tqdm) or before its ``\\n`` comes; the next record of
    that stream replaces it, and readers that print the output for good (``%gpuqueue logs``)
    skip it. Every line ends as one final record: at its ``\\n`` (its last ``\\r`` state), when
    the job moves on (a line printed on the other stream ends it, as on a terminal; a ``\\n``
    that follows then is that line's own and is dropped), or when the pipe closes.

    One thread reads both pipes: after each wake-up it reads them in turn until neither has
    more, so everything written before a line is read with it (:meth:`_feed_round` orders
    what one wake-up read): a bar the job ended before printing elsewhere comes before that print.
    Transient records come at most every :data:`PARTIAL_LINE_FLUSH_S` per stream (every
    :data:`TRANSIENT_SLOW_S` after :data:`TRANSIENT_SLOW_AFTER` of them) and take at most
    1/:data:`TRANSIENT_MAX_SHARE` of the attempt's output limit, so a bar redrawn for days
    stores little."""

    def __init__(self, out: EventWriter, fds: list[tuple[int, str]]) -> None:
        self.out = out
        self.streams = [_Stream(fd, name) for fd, name in fds]
        limit = out.max_job_bytes if out.max_job_bytes is not None else MAX_OUTPUT_BYTES
        self.transient_budget = limit // TRANSIENT_MAX_SHARE

    def run(self) -> None:
        """Read until both pipes close; the lines still being written then end as final ones."""
        poller = select.poll()
        for s in self.streams:
            os.set_blocking(s.fd, False)
            poller.register(s.fd, select.POLLIN)
        try:
            while any(s.open for s in self.streams):
                poller.poll(self._timeout_ms())
                self._feed_round(self._read_all())
                for s in self.streams:
                    if not s.open and s.fd >= 0:  # closed: the line it was writing ends
                        self._feed_text(s, s.carry)
                        s.carry = b""
                        if s.pending.strip(b"\r"):
                            self._final(s, s.current(), move_on=False)
                        poller.unregister(s.fd)
                        os.close(s.fd)
                        s.fd = -1
                self._show_pending(time.monotonic())
        finally:
            for s in self.streams:
                if s.pending.strip(b"\r"):
                    self._final(s, s.current(), move_on=False)
                if s.fd >= 0:
                    os.close(s.fd)

    def _read_all(self) -> dict[str, bytes]:
        """What the pipes hold now. Each is read again after the other had something (until a
        pass over both reads nothing), so the bytes written before any byte read are read too;
        a flood is cut at :data:`READ_ROUND_BYTES`."""
        got = {s.name: b"" for s in self.streams}
        total, quiet = 0, 0
        while quiet < len(self.streams) and total < READ_ROUND_BYTES:
            for s in self.streams:
                chunk = b""
                if s.open:
                    try:
                        chunk = os.read(s.fd, 65536)
                        s.open = bool(chunk)
                    except BlockingIOError:
                        pass
                if chunk:
                    got[s.name] += chunk
                    total += len(chunk)
                    quiet = 0
                else:
                    quiet += 1
        return got

    def _feed_round(self, data: dict[str, bytes]) -> None:
        """Records for what one wake-up read. The order of bytes read from the two pipes in
        the same wake-up is unknown (written microseconds apart, or while the runner waited for
        a CPU); it is taken as: the end of a line being written (a bar's ``\\n``) first, as a job
        ends its line before it prints elsewhere; then the other stream's lines; a bar's further
        redraws last, so the job's print ends the bar's line as it was before them."""
        rest = dict(data)
        for s in self.streams:
            nl = rest[s.name].find(b"\n")
            if s.pending and nl >= 0:
                self._feed(s, rest[s.name][: nl + 1])
                rest[s.name] = rest[s.name][nl + 1 :]
        for s in sorted(self.streams, key=lambda s: bool(s.pending) and b"\n" not in rest[s.name]):
            if rest[s.name]:
                self._feed(s, rest[s.name])

    def _feed(self, s: _Stream, data: bytes) -> None:
        """Split out the lines another torchrun rank wrote (:data:`RANK_LINE`): whole lines of
        another process, they do not touch the line being written here (rank 0's bar)."""
        data, s.carry = s.carry + data, b""
        while data:
            if s.marked is not None:
                nl = data.find(b"\n")
                if nl < 0:
                    s.marked = (s.marked + data)[:MAX_LINE_BYTES]
                    return
                rank, _, text = (s.marked + data[:nl]).partition(b";")
                s.marked, data = None, data[nl + 1 :]
                _emit_line(self.out, s.name, b"[rank" + rank[:8] + b"] " + text, False)
                s.shown = None  # readers replaced the line being written: it is shown again
                continue
            i = data.find(RANK_LINE)
            if i < 0:
                for k in range(min(len(RANK_LINE) - 1, len(data)), 0, -1):
                    if data.endswith(RANK_LINE[:k]):  # perhaps a mark cut by the read: the next read tells
                        data, s.carry = data[:-k], data[-k:]
                        break
                self._feed_text(s, data)
                return
            self._feed_text(s, data[:i])
            s.marked, data = b"", data[i + len(RANK_LINE) :]

    def _feed_text(self, s: _Stream, data: bytes) -> None:
        if not data:
            return
        if s.ended:
            s.ended = False
            if data.startswith(b"\n"):
                data = data[1:]
        while data:
            nl = data.find(b"\n")
            part, data = (data, b"") if nl < 0 else (data[:nl], data[nl + 1 :])
            if not s.cut:
                if not s.pending:
                    s.since = time.monotonic()
                s.pending += part
                if b"\r" in s.pending.rstrip(b"\r"):  # only the line's latest state is kept
                    cr = s.pending.rstrip(b"\r").rfind(b"\r")
                    s.pending = s.pending[cr:]
                if len(s.pending) > MAX_LINE_BYTES:
                    s.pending, s.cut = s.pending[:MAX_LINE_BYTES], True
            if nl >= 0:
                self._final(s, s.current(), move_on=True)

    def _final(self, s: _Stream, line: bytes, move_on: bool) -> None:
        """``line`` ends ``s``'s pending line; the other streams' lines being written end first."""
        if move_on:
            for other in self.streams:
                if other is not s and other.current():
                    self._final(other, other.current(), move_on=False)
                    other.ended = True
        s.pending, s.cut, s.shown = b"", False, None
        _emit_line(self.out, s.name, line, False)

    def _interval(self, s: _Stream) -> float:
        return PARTIAL_LINE_FLUSH_S if s.transients < TRANSIENT_SLOW_AFTER else TRANSIENT_SLOW_S

    def _timeout_ms(self) -> Optional[int]:
        """How long the next wait may last: until the next pending line is due to be shown."""
        due = [s.since + self._interval(s) for s in self.streams if s.current() and s.current() != s.shown]
        if not due:
            return None
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _show_pending(self, now: float) -> None:
        for s in self.streams:
            current = s.current()
            if not current or current == s.shown or now < s.since + self._interval(s):
                continue
            s.since, s.shown = now, current
            if self.transient_budget > 0:
                s.transients += 1
                self.transient_budget -= len(current) + 80
                _emit_line(self.out, s.name, current, True)


def _emit_line(out: EventWriter, stream: str, raw: bytes, transient: bool) -> None:
    text = raw.decode("utf-8", "replace")
    if len(text) > MAX_LINE:
        text = text[:MAX_LINE] + " …[line cut]"
    data: dict[str, Any] = {"stream": stream, "line": text}
    if transient:
        data["transient"] = True
    out.write_job("log", data)


def job_event(raw: bytes, job_dir: Optional[str] = None) -> Optional[tuple[str, dict[str, Any], Optional[float]]]:
    """One record a job sent, as (type, data, time), or None if it is not a job-side event
    (a torn line, a foreign one, or a type only the runner may write: ``exit``, ``runner``,
    ``state``, ``log``). A checkpoint record says whether its path lies in the job's own folder
    (``in_job_folder``): one that does not is the job's claim, nothing more."""
    if len(raw) > MAX_EVENT:
        return None
    try:
        rec = json.loads(raw)
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
    if not isinstance(path, str) or not folder or "://" in path:
        return False
    real, root = os.path.realpath(path), os.path.realpath(folder)
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
    where the last read stopped; only job-side records pass."""

    def __init__(self, folder: OwnedDir, job_dir: Optional[str]):
        self.fd = folder.open_file("events.jsonl")
        self.job_dir = job_dir
        self.buf = b""

    def drain(self, out: EventWriter) -> None:
        """Copy the complete new lines."""
        if self.fd is None:
            return
        while True:
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return
            self.buf += chunk
            *lines, self.buf = self.buf.split(b"\n")
            if len(self.buf) > MAX_EVENT:
                self.buf = b""  # an endless line: dropped
            for raw in lines:
                ev = job_event(raw, self.job_dir)
                if ev is not None:
                    out.write_job(ev[0], ev[1], ev[2])

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
        self.own: Optional[OwnedDir] = None  # the job's attempt folder, where it runs as its own user
        self.own_error: Optional[OSError] = None
        self._cwd_failed: Optional[dict[str, Any]] = None  # the job's process could not enter its folder
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
                hint = IDENTITY_HINT if self.user and isinstance(e, PermissionError) else ""
                self.out.write("log", {"stream": "stderr", "line": f"gpuqueue: cannot start the job{self._who()}: {e}{hint}"})
                stage = launchfail.CWD if cwd and e.filename == cwd else launchfail.EXEC
                return self._finish(127, started, self._launch_error(stage, e))
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
        job_events = JobEventsFile(self.own, self.job_dir) if self.own is not None else None
        for p in pumps:
            p.start()
        proc = self.proc
        # wake the loop the moment the job exits (no polling delay before the exit record)
        def wake_on_exit() -> None:
            proc.wait()
            self._wake.set()

        threading.Thread(target=wake_on_exit, daemon=True).start()
        while self.proc.poll() is None:
            self._wake.wait(JOB_EVENTS_POLL_S if job_events is not None else 0.2)
            self._wake.clear()
            if job_events is not None:
                job_events.drain(self.out)
            self._check_control()
            if self.kill_at is not None and time.time() >= self.kill_at:
                self._signal_group(signal.SIGKILL)
                self.kill_at = None
        for p in pumps:
            p.join(timeout=5)
        # children that outlived the job's main process must not keep its GPUs
        self._signal_group(signal.SIGKILL)
        for p in pumps:  # their pipes close with them: the lines they were writing end
            p.join(timeout=2)
        if job_events is not None:
            job_events.drain(self.out)
            job_events.close()
        return self._finish(self.proc.returncode, started, self._cwd_failed)

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
        return launchfail.record(stage, e, path, self.user, node)

    def _who(self) -> str:
        return f" as uid {self.user['uid']} (user {self.user['name']})" if self.user else ""

    def _on_sigterm(self, *_: Any) -> None:
        # only set flags here: the main loop does the work (no locks taken in a signal handler)
        self._terminated = True
        self._wake.set()

    def _check_control(self) -> None:
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

    def _finish(self, code: int, started: float, launch_error: Optional[dict[str, Any]] = None) -> int:
        """Write the ``exit`` record and ``exit.json`` (with ``launch_error`` when the job could
        not start: :mod:`gpuqueue.attempt.launchfail`); returns ``code``."""
        record: dict[str, Any] = {"exit_code": code, "stop_reason": self.stop_reason, "started": started,
                                  "ended": time.time()}
        if launch_error is not None:
            record["launch_error"] = launch_error
        self.out.write("exit", record)
        self.out.close()
        tmp = self.dir / "exit.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.dir / "exit.json")
        return code


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: ``python -m gpuqueue.attempt.runner ATTEMPT_DIR``.

    ``python -m gpuqueue.attempt.runner -`` is a *warm* runner: started ahead of time, it waits for the
    attempt folder on stdin, so a launch costs a write instead of an interpreter start. Its
    stderr then goes to the attempt's ``runner.log``. EOF on stdin: it exits, having run nothing.
    A first line that is a JSON object is a ``gpuqueue.attempt.warmjob.warm_spec``: the runner
    starts the job's interpreter at once, before the attempt folder comes.
    """
    args = sys.argv[1:] if argv is None else argv
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
