"""The on-disk layout of a job, shared by the service, the worker, the runner and the job.

    <state_dir>/jobs/<job_id>/
        spec.json                 the JobSpec
        QUEUE                     the queue's id (cluster workers: their sweep deletes only
                                  tagged folders, once the job's record is gone)
        payload.pkl               the cloudpickled cell (cell jobs)
        attempt-<n>/
            launch.json           what the runner needs: argv, cwd, env, GPU ids, identity
            events.jsonl          everything the attempt said, one JSON object a line
            control.json          a stop request from the service (reason, grace)
            exit.json             how the attempt ended (written last, atomically)
            result.pkl            the cell's returned names (cell jobs that succeeded)
            result.json/error.json  the names returned / the cell's error
            runner.log            the runner's own errors

That is the whole layout where jobs run as the same user as the process that launches them
(embedded mode, a worker that is not root). Where each job runs under its owner's own identity
(a root worker, ``gpuqueue.attempt.identity``), what the job writes is kept apart from the records it
must not touch::

    <state_dir>/jobs/<job_id>/attempt-<n>/   root, 0700: launch.json events.jsonl control.json
                                             exit.json runner.log  (the runner's records)
    <state_dir>/work/                        root, 0711: no listing of other users' jobs
    <state_dir>/work/<job_id>/               the owner, 0700: $GPUQUEUE_JOB_DIR
        payload.pkl, checkpoints/...
        attempt-<n>/                         the owner, 0700: $GPUQUEUE_ATTEMPT_DIR
            result.pkl result.json error.json
            events.jsonl                     events of ranks without the runner's pipe; the
                                             runner copies the job-side types it allows
            control.json                     the runner's copy of a stop request

Root never follows a link inside a folder a job owns: such folders are opened component by
component with ``O_NOFOLLOW`` from a root-owned parent (:class:`OwnedDir`), files in them are
created under a fresh name and renamed, and a file is read only if it is a regular file of the
job's own uid with one link.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

READ_CHUNK = 4 * 1024 * 1024  # bytes of events.jsonl read at a time
MAX_DEPTH = 64  # nesting of a record a job wrote (an event, error.json) that its readers accept


def load_json(raw: Union[bytes, str]) -> Any:
    """JSON that a job wrote, as the runner and the worker read it: ValueError for what is not
    JSON, and for a document nested over :data:`MAX_DEPTH` levels. (Python's json raises
    RecursionError, not ValueError, some thousand levels down; a record just under that would
    raise it again in the next reader or writer of it: the worker, the API.)"""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deep") from None
    todo: list[tuple[Any, int]] = [(obj, 0)]
    while todo:
        o, depth = todo.pop()
        if isinstance(o, (dict, list)):
            if depth >= MAX_DEPTH:
                raise ValueError(f"nested over {MAX_DEPTH} levels")
            todo.extend((v, depth + 1) for v in (o.values() if isinstance(o, dict) else o))
    return obj


MAX_RECORD_BYTES = 1_000_000  # of a record a job wrote (error.json, result.json) that is read
MALFORMED = "_malformed"  # the key of what :func:`job_record` gives for a record that is not JSON


def job_record(raw: Optional[bytes]) -> Any:
    """A record the job wrote (``error.json``, ``result.json``) from its bytes (None: there is
    none): its JSON, or ``{MALFORMED: why}`` where it is not JSON or is nested too deep, so that
    whoever settles the attempt says so instead of raising or keeping silent
    (:func:`gpuqueue.queue.lifecycle.job_error`)."""
    if raw is None:
        return None
    try:
        return load_json(raw)
    except ValueError as e:
        why = str(e)
        return {MALFORMED: "not JSON: " + (why if len(why) < 200 else why[:200] + "...")}


def read_job_record(folder: Path, name: str, limit: int = MAX_RECORD_BYTES) -> Any:
    """:func:`job_record` of ``folder/name``, read as the job's records are where the job runs
    as the reader's own user (embedded mode): at most ``limit`` bytes, and only a regular file
    (a FIFO there would block the reader; a link is not followed)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fd = open_owned_file(dfd, name, None)
    finally:
        os.close(dfd)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        return job_record(f.read(limit))


def job_dir(state_dir: str | Path, job_id: str) -> Path:
    """Folder of one job."""
    return Path(state_dir) / "jobs" / job_id


def attempt_dir(state_dir: str | Path, job_id: str, number: int) -> Path:
    """Folder of one attempt of a job."""
    return job_dir(state_dir, job_id) / f"attempt-{number}"


def work_dir(state_dir: str | Path, job_id: str) -> Path:
    """The folder a job owns when it runs under its own identity (``$GPUQUEUE_JOB_DIR``)."""
    return Path(state_dir) / "work" / job_id


@dataclass(frozen=True)
class AttemptPaths:
    """Where one attempt's files live."""

    records: Path  # the runner's records (launch.json, events.jsonl, control.json, exit.json)
    job: Path  # the job's own folder: $GPUQUEUE_JOB_DIR (payload.pkl, checkpoints)
    attempt: Path  # the attempt's own folder: $GPUQUEUE_ATTEMPT_DIR (result.pkl, error.json)

    @property
    def split(self) -> bool:
        """Whether the job's folders are apart from the records (it runs as its own identity)."""
        return self.attempt != self.records


def attempt_paths(state_dir: str | Path, job_id: str, number: int, split: bool) -> AttemptPaths:
    """The folders of attempt ``number``; ``split``: the job runs under its own identity."""
    records = attempt_dir(state_dir, job_id, number)
    if not split:
        return AttemptPaths(records, job_dir(state_dir, job_id), records)
    work = work_dir(state_dir, job_id)
    return AttemptPaths(records, work, work / f"attempt-{number}")


def open_owned_file(dir_fd: int, name: str, uid: Optional[int]) -> Optional[int]:
    """A read descriptor on ``name`` in the folder ``dir_fd`` if it is a regular file with one
    link, owned by ``uid`` (any owner when None): never a link, a FIFO or someone else's file."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (uid is not None and (st.st_uid != uid or st.st_nlink != 1)):
        os.close(fd)
        return None
    return fd


class OwnedDir:
    """A folder that a job's identity owns, as root opens it: every component below the trusted,
    root-owned ``parent`` is opened with ``O_NOFOLLOW``, so a link the job planted cannot send a
    read or a write elsewhere. ``uid`` None: the job is this process's own user (no checks)."""

    def __init__(self, parent: Path, names: list[str], uid: Optional[int] = None, gid: Optional[int] = None,
                 create: bool = False):
        self.uid, self.gid = uid, gid
        self.path = parent.joinpath(*names)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                if create:
                    try:
                        os.mkdir(name, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
                if uid is not None and create:
                    st = os.fstat(fd)
                    if st.st_uid not in (0, uid):
                        raise PermissionError(f"{parent.joinpath(*names)} belongs to uid {st.st_uid}, not {uid}")
                    os.fchown(fd, uid, gid if gid is not None else -1)
                    os.fchmod(fd, 0o700)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        """Close the folder's descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "OwnedDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def open_file(self, name: str) -> Optional[int]:
        """A read descriptor on ``name`` if it is a regular file of the owner with one link
        (never a link, a FIFO or someone else's file), else None."""
        return open_owned_file(self.fd, name, self.uid)

    def size(self, name: str) -> Optional[int]:
        """The size of ``name`` (as :meth:`open_file` would open it), or None."""
        fd = self.open_file(name)
        if fd is None:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def read(self, name: str, limit: int) -> Optional[bytes]:
        """At most ``limit`` bytes of ``name`` (see :meth:`open_file`), or None."""
        fd = self.open_file(name)
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(limit)

    def read_json(self, name: str, limit: int = MAX_RECORD_BYTES) -> Any:
        """The JSON in ``name`` (a record the job wrote: :func:`job_record`), or None if it is
        missing or not the owner's."""
        return job_record(self.read(name, limit))

    def write(self, name: str, data: bytes, exclusive: bool = False) -> None:
        """Write ``name`` whole, owned by the job's identity: a fresh name, then a rename (which
        replaces a link the job put there instead of following it). ``exclusive``: keep an
        existing ``name``."""
        tmp = f".{name}.{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            if self.uid is not None:
                os.fchown(fd, self.uid, self.gid if self.gid is not None else -1)
        finally:
            os.close(fd)
        if exclusive:
            try:
                os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
            except FileExistsError:
                pass
            os.unlink(tmp, dir_fd=self.fd)
        else:
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def own_folder(path: Path, mode: int) -> None:
    """Make ``path`` (and its parents) if need be, check that it is a folder of this process's
    own user, not a link, and give it ``mode``. Raises PermissionError otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(f"{path} must be a folder of the worker's own user, not a link")
    os.chmod(path, mode)


def prepare_owned(state_dir: str | Path, job_id: str, number: int, uid: int, gid: int,
                  payload: Optional[bytes] = None) -> AttemptPaths:
    """Make the folders of an attempt that runs as ``uid``/``gid`` (see the module docstring):
    the records root-only, the job's folders its own, an empty job-side ``events.jsonl``
    (appends need it to exist), and the cell payload in the job folder."""
    paths = attempt_paths(state_dir, job_id, number, split=True)
    root = Path(state_dir)
    for d, mode in ((root / "jobs", 0o700), (root / "work", 0o711)):
        own_folder(d, mode)
    paths.records.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(paths.records.parent, 0o700)
    with OwnedDir(root / "work", [job_id], uid, gid, create=True) as jd:
        if payload is not None and jd.size("payload.pkl") is None:
            jd.write("payload.pkl", payload)
    with OwnedDir(root / "work", [job_id, paths.attempt.name], uid, gid, create=True) as ad:
        ad.write("events.jsonl", b"", exclusive=True)
    return paths


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: Union[bytes, mmap.mmap]) -> None:
    """Write bytes (or a memory map's) through a temporary file, fsync, rename."""
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
    Unparsable lines are skipped, and so are records that are not ``{"t", "type", "data"}``
    objects (``data`` an object, ``t`` a number or absent): where the job runs as the reader's
    own user it may write this file itself, and a record of another shape made every reader of
    it raise at that line for ever. A missing file reads as nothing new."""
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
            rec = load_json(raw)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        type_, d, t = rec.get("type"), rec.get("data", {}), rec.get("t")
        if not isinstance(type_, str) or not isinstance(d, dict):
            continue
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t < 1e11:
            t = None
        if type_ == "exit":
            out.exit = d
        elif type_ == "runner":
            out.runner = {"t": t, "data": d}
        else:
            out.events.append((t, type_, d))
    return out
