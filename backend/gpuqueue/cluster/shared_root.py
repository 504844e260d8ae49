"""The workers' shared storage root (``gpuqueue worker --shared-dir PATH|URL``): where a job's
checkpoints live between attempts, so a requeued attempt resumes on any node.

Layout under the root (a folder on a shared file system, or any fsspec URL: ``s3://``, ``gs://``)::

    <root>/jobs/<job_id>/checkpoints/<name>/step-000000042/...   files first
    <root>/jobs/<job_id>/checkpoints/<name>/step-000000042/COMPLETE   the marker, last

Only the workers touch the root; jobs never do and never hold its credentials. A job writes its
checkpoints to its local job folder (``$GPUQUEUE_JOB_DIR/checkpoints``, the
:class:`~gpuqueue.job.checkpoint.Checkpointer` default) on the node's own disk; the worker

* before an attempt starts, copies the job's complete checkpoints from the root into that local
  folder (:meth:`SharedRoot.pull`), so ``Checkpointer.resume_point`` and the HF callback's
  automatic resume find them on whichever node the attempt runs;
* before the first attempt of a job started with ``--resume-from JOB_ID[/step-N]`` (another job
  of its owner's, ``gpuqueue.queue.ckptref``), copies that one checkpoint of the other job from
  the root into the new job's local folder (:meth:`SharedRoot.pull_one`, called by
  ``shared_resume.py``), so it resumes from it on any node;
* each time the job reports a ``checkpoint`` event, and once more when the attempt ends (before
  the end is reported, so the next attempt finds it), copies the complete local checkpoints that
  the root lacks to the root, marker last, and deletes from the root the ones the job rotated
  away (:meth:`SharedRoot.push`). A push whose local set of complete checkpoints is the one the
  attempt's last push left on the root makes no remote call at all (:class:`PushMemo`).

Cleanup: the first copy of each attempt also writes ``<root>/jobs/<job_id>/QUEUE``, the id of the
queue (its Redis store and prefix) the job belongs to. Workers sweep the root now and then
(``worker_sweep.py``): a job folder tagged with their own queue's id whose job record is gone
from the store (the daemon deletes it ``--keep-finished`` after the job ended) is deleted
(:meth:`SharedRoot.delete_job`). Folders of other queues sharing the root, and untagged ones,
are left alone.

A storage error is an exception (:class:`StorageError`) that the worker turns into the attempt's
failure with the message, never a silent start from zero.

Where jobs run under their owners' identities (a root worker), what the job owns is read without
following links and only if it is a regular file of the job's uid with one link (so a job cannot
make the worker copy another file to the root), and what is copied back is created owned by that
uid, through ``O_NOFOLLOW`` folders.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, NamedTuple, Optional, Protocol, Sequence

from ..attempt.jobdir import open_owned_file
from ..job.checkpoint import MARKER, remove_checkpoint

CHECKPOINTS = "checkpoints"
QUEUE_TAG = "QUEUE"
CHUNK = 8 * 1024 * 1024
MAX_DEPTH = 64  # folders a checkpoint may nest (root walks it to push it)
MAX_FILES = 100_000  # files and folders a checkpoint may hold (root lists each one to push it)
# characters of the paths (under the checkpoint) of its files and folders in all: root keeps a note
# of each file's path until the checkpoint is copied (64 folders of 255 characters make a path of
# 16 KB: 20,000 such files took root's worker 316 MB, 100,000 some 1.6 GB, in each push of each
# of the owner's attempts at once)
MAX_PATH_CHARS = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """The shared root could not be read or written. ``str()`` is the admin's message, for the
    worker's log: the root's paths and the storage's own error. :attr:`public` says what failed
    without them, for the job's output and error: where the root is and how it is laid out are
    the system's, not the user's."""

    def __init__(self, message: str, public: Optional[str] = None):
        super().__init__(message)
        self.public = public or message


class Unfit(OSError):
    """A checkpoint the worker does not copy to the root, however often it tries: nested over
    :data:`MAX_DEPTH` folders, holding over :data:`MAX_FILES` names or paths over
    :data:`MAX_PATH_CHARS` characters in all, or holding a link, a special
    file, a hard link or (for a job of its own uid) another user's file. ``str()`` is the job's
    own message: what is wrong, and what to do."""


class Changed(OSError):
    """A file of a checkpoint was gone or another one when the worker came to copy it (the job
    rotated the checkpoint away meanwhile): the copy is given up, the next push looks again."""


@dataclass(frozen=True)
class CheckpointFile:
    """A file of a checkpoint as the worker's walk found it: its ``rel`` name under the
    checkpoint's folder, and the file (``dev``, ``ino``) and ``size`` it was; opened only when
    it is copied, and then only if it is still that file."""

    rel: str
    dev: int
    ino: int
    size: int


class UserRefusal(NamedTuple):
    """A checkpoint that its owner's bound on the root refused (:meth:`Quota.take`)."""

    checkpoint: str  # name/step-N
    size: int  # its bytes
    files: int  # its files and folders, its marker included
    used: int  # the bytes all the owner's jobs' checkpoints take on the root
    used_files: int  # the files they hold there
    limit: int  # the owner's bound in bytes (max_shared_gb)
    limit_files: int  # and in files (max_shared_files)
    by_files: bool  # refused for the files (else for the bytes)


@dataclass
class PushMemo:
    """What one attempt's pushes already did: ``copied`` the ``name/step@marker`` keys copied;
    ``mirrored`` the local set of complete checkpoints that the last push left mirrored on the
    root (None: not yet), so an unchanged set is neither copied nor listed again; ``tagged``
    whether the job's folder carries the queue's tag."""

    copied: set[str] = field(default_factory=set)
    mirrored: Optional[frozenset[tuple[str, str, str]]] = None
    tagged: bool = False
    sizes: dict[str, int] = field(default_factory=dict)  # bytes of each checkpoint copied (by key)
    refused: set[str] = field(default_factory=set)  # keys not copied: over ``SharedRoot.max_bytes``
    refusals: list[tuple[str, int, int]] = field(default_factory=list)  # (name/step, its bytes, bytes
    # the attempt's others there take) of the refusals not yet told (AttemptUploads takes them)
    user_refusals: list[UserRefusal] = field(default_factory=list)  # those ``quota`` refused, not yet told
    unfit: list[tuple[str, str]] = field(default_factory=list)  # (name/step, why: Unfit's text) of those
    # refused for their shape (too deep, too many files), not yet told
    crowded: bool = False  # the last push's listing of the job's checkpoints stopped at MAX_FILES names


class Quota(Protocol):
    """What all the checkpoints of a job's owner may take on the root, counted across workers
    (``shared_usage.UserShare``): ``take`` counts a checkpoint (``name/step-N``: its bytes and
    files) of the job before it is copied (``keep``: the job's local ones, whose runs' others on
    the root are rotated away), or refuses it (returns why, not None); ``give`` uncounts those
    deleted from the root."""

    def take(self, checkpoint: str, size: int, files: int, keep: Sequence[str] = (),
             bound: bool = True) -> Optional[UserRefusal]: ...

    def give(self, checkpoints: list[str]) -> None: ...


class SharedRoot:
    """One shared root: ``url`` a folder or fsspec URL; ``options`` fsspec storage options
    (credentials, ``endpoint_url``...), kept in the worker only; ``queue`` the id the job
    folders this worker writes are tagged with (None: untagged, never swept)."""

    def __init__(self, url: str, options: Optional[dict[str, Any]] = None, queue: Optional[str] = None,
                 max_bytes: int = 0):
        import fsspec

        # what one attempt's checkpoints may take on the root (0: no bound); see push()
        self.max_bytes = max_bytes

        if not url or not isinstance(url, str):
            raise ValueError("--shared-dir needs a folder or an fsspec URL (s3://bucket/prefix)")
        if "://" not in url:
            url = str(Path(url).resolve())
        try:
            self.fs, self.base = fsspec.url_to_fs(url, **(options or {}))
        except (ImportError, ValueError) as e:
            raise ValueError(f"--shared-dir {url}: {e}") from None
        from fsspec.implementations.local import LocalFileSystem

        self.url = url
        self.queue = queue
        self.local = isinstance(self.fs, LocalFileSystem)
        self.base = self.base.rstrip("/")

    def __repr__(self) -> str:
        return f"SharedRoot({self.url!r})"

    def check(self) -> None:
        """Write, read and delete a probe file under the root (at worker start)."""
        probe = f"{self.base}/.probe-{uuid.uuid4().hex[:12]}"
        if self.local:
            self._check_local_mode()
        try:
            self.fs.pipe_file(probe, b"ok")
            if self.fs.cat_file(probe) != b"ok":
                raise StorageError("a probe file read back different")
            self.fs.rm_file(probe)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - fsspec backends raise their own errors
            raise StorageError(f"the shared root {self.url} is not usable: {_say(e)}") from None

    def _check_local_mode(self) -> None:
        """A folder root is made mode 700; an existing one that others may enter is refused
        (jobs run on the nodes that mount it and must not read other jobs' checkpoints)."""
        try:
            os.makedirs(self.base, mode=0o700, exist_ok=True)
            st = os.stat(self.base)
        except OSError as e:
            raise StorageError(f"the shared root {self.url} is not usable: {_say(e)}") from None
        mode = st.st_mode & 0o777
        if mode & 0o007 or (mode & 0o070 and st.st_gid != 0):  # a job's gid may be the group (not root's)
            raise StorageError(f"the shared root {self.url} is mode {mode:03o}: jobs on the nodes that mount it could "
                               f"read every job's checkpoints; only the workers may (chmod 700 {self.url})")
        if st.st_uid not in (0, os.geteuid()):
            raise StorageError(f"the shared root {self.url} belongs to uid {st.st_uid}: that user's jobs could read and "
                               f"change every job's checkpoints; only the workers may (chown root {self.url})")

    def job_prefix(self, job_id: str) -> str:
        """The job's checkpoints on the root (a path inside ``fs``)."""
        return f"{self.base}/jobs/{job_id}/{CHECKPOINTS}"

    # -- root -> node -------------------------------------------------------------------------
    def _markers(self, job_id: str) -> list[str]:
        """The markers of the job's complete checkpoints on the root, sorted."""
        prefix = self.job_prefix(job_id)
        try:
            return sorted(self.fs.glob(f"{prefix}/*/step-*/{MARKER}"))
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot list {self._u(prefix)}: {_say(e)}",
                               f"cannot list the job's checkpoints on the shared root ({_kind(e)})") from None

    def pull(self, job_id: str, job_dir: Path, uid: Optional[int] = None, gid: Optional[int] = None) -> list[str]:
        """Copy the job's complete checkpoints from the root into ``job_dir/checkpoints`` (those
        already there are kept); the ``name/step-N`` copied. ``uid``: the job's own identity."""
        done: list[str] = []
        for m in self._markers(job_id):
            name, step = m.rsplit("/", 3)[-3:-1]
            if self.pull_one(m.rsplit("/", 1)[0], job_dir, [CHECKPOINTS, name, step], uid, gid):
                done.append(f"{name}/{step}")
        return done

    def checkpoints(self, job_id: str) -> dict[tuple[str, str], str]:
        """The job's complete checkpoints on the root: ``(name, step-N folder)`` -> its folder there."""
        return {tuple(m.rsplit("/", 3)[-3:-1]): m.rsplit("/", 1)[0] for m in self._markers(job_id)}  # type: ignore[misc]

    def pull_one(self, folder: str, job_dir: Path, dest: list[str], uid: Optional[int] = None,
                 gid: Optional[int] = None) -> bool:
        """Copy the checkpoint ``folder`` of the root (one of :meth:`checkpoints`) to the folder
        ``dest`` (names) under ``job_dir``, its marker last; False if a complete copy is there."""
        name, step = folder.rsplit("/", 2)[-2:]
        local = _Local(job_dir, uid, gid)
        if local.has_at(dest):
            return False
        try:
            files = [f for f in self.fs.find(folder) if f.rsplit("/", 1)[-1] != MARKER]
            marker = self.fs.cat_file(f"{folder}/{MARKER}")
            for f in files:
                rel = f[len(folder) + 1:]
                with self.fs.open(f, "rb") as src:
                    local.write([*dest, *rel.split("/")[:-1]], rel.split("/")[-1], src)
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot copy checkpoint {self._u(folder)} from the shared root: {_say(e)}",
                               f"cannot copy checkpoint {name}/{step} from the shared root to this node "
                               f"({_kind(e)})") from None
        local.write(dest, MARKER, marker)
        return True

    # -- node -> root -------------------------------------------------------------------------
    def push(self, job_id: str, job_dir: Path, uid: Optional[int] = None, memo: Optional[PushMemo] = None,
             quota: Optional[Quota] = None) -> list[str]:
        """Copy the complete checkpoints of ``job_dir/checkpoints`` that the root lacks to the
        root (marker last), then delete from the root those the job rotated away (never all of
        a run's). ``memo``: what this attempt's earlier pushes did (updated); with the local set
        unchanged since the last push, nothing is copied or listed; at an attempt's first push, a
        checkpoint the root already holds (the same marker: one the attempt was started with) is
        not copied again. Returns the ``name/step-N`` copied.

        Bound: a checkpoint is not copied if with it the checkpoints of the local set that this
        attempt copied would take over ``max_bytes`` on the root (counted by the files' sizes,
        so a sparse file counts whole: it becomes real bytes there, and again on the node that
        copies it back); it is added to ``memo.refusals`` for the job to be told, and left on
        the node. Within that, ``quota`` (the owner's bound over all their jobs, counted in the
        store) takes each checkpoint before it is copied and gives back those rotated away; one
        it refuses goes to ``memo.user_refusals`` and is left on the node as well. One nested
        too deep, holding too many files, or holding a link or a file not the job's own
        (:class:`Unfit`) goes to ``memo.unfit``, left too.

        Descriptors: the worker (root, one process for every job on the node) holds at most a
        folder's and a file's of the job's at once, however many files the checkpoint holds;
        each file is opened when it is copied (:meth:`_Local.open_each`)."""
        memo = memo if memo is not None else PushMemo()
        copied: list[str] = []
        local = _Local(job_dir, uid, None)
        found, memo.crowded = local.complete()
        now = frozenset(found)
        if now == memo.mirrored:
            return copied
        whole = True  # every checkpoint of ``found`` is on the root
        for name, step, marker_id in found:
            key = f"{name}/{step}@{marker_id}"
            if key in memo.copied or key in memo.refused:
                continue
            dest = f"{self.job_prefix(job_id)}/{name}/{step}"
            try:
                files, count, marker = local.read_checkpoint(name, step)
            except Unfit as e:
                memo.refused.add(key)
                memo.unfit.append((f"{name}/{step}", str(e)))
                continue
            except OSError:
                whole = False
                continue  # rotated away while we looked: a newer one is there
            size = len(marker) + sum(f.size for f in files)
            if memo.mirrored is None and self._there(dest, marker):  # the attempt's first push: those
                memo.copied.add(key)  # it was started with (pulled from the root) are there already
                memo.sizes[key] = size
                if quota is not None:  # counted already, unless copied by a version that did not count
                    quota.take(f"{name}/{step}", size, count, bound=False)
                continue
            if self.max_bytes:
                held = sum(memo.sizes.get(k, 0) for k in (f"{n}/{s}@{m}" for n, s, m in found) if k in memo.copied)
                if held + size > self.max_bytes:
                    memo.refused.add(key)
                    memo.refusals.append((f"{name}/{step}", size, held))
                    continue
            keep = [f"{n}/{s}" for n, s, _ in found]  # the store unavailable: not copied, the push fails
            refusal = None if quota is None else quota.take(f"{name}/{step}", size, count, keep)
            if refusal is not None:
                memo.refused.add(key)
                memo.user_refusals.append(refusal)
                continue
            try:
                if not memo.tagged:
                    self._tag(job_id)
                    memo.tagged = True
                self._remove(dest)  # a stale copy of the same step (a rerun after a resume)
                with closing(local.open_each(name, step, files)) as each:
                    for f, fd in each:
                        target = f"{dest}/{f.rel}"
                        if self.local:
                            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                        with self.fs.open(target, "wb") as out:
                            _copy_counted(fd, out, f)
                self.fs.pipe_file(f"{dest}/{MARKER}", marker)
            except Changed:  # rotated away while it was copied: its part copy (no marker) goes
                self._remove(dest)
                if quota is not None:
                    quota.give([f"{name}/{step}"])
                whole = False
                continue
            except Exception as e:  # noqa: BLE001
                raise StorageError(f"cannot copy checkpoint {name}/{step} to the shared root {self._u(dest)}: "
                                   f"{_say(e)}", f"cannot copy checkpoint {name}/{step} to the shared root "
                                                 f"({_kind(e)})") from None
            memo.copied.add(key)
            memo.sizes[key] = size
            copied.append(f"{name}/{step}")
        gone = self._rotate(job_id, {(n, s) for n, s, _ in found})
        if quota is not None and gone:
            quota.give(gone)
        if whole:
            memo.mirrored = now
        return copied

    def _there(self, dest: str, marker: bytes) -> bool:
        """Whether the root holds this very checkpoint at ``dest`` (its marker, written last and
        unique to one save, is the same), e.g. one the attempt was started with: not copied again."""
        try:
            return bool(self.fs.cat_file(f"{dest}/{MARKER}") == marker)
        except Exception:  # noqa: BLE001 - not there, or not readable: copied (a real error shows there)
            return False

    def _tag(self, job_id: str) -> None:
        """Write the queue's tag in the job's folder (before its first checkpoint there)."""
        if self.queue is None:
            return
        folder = f"{self.base}/jobs/{job_id}"
        if self.local:
            self.fs.makedirs(folder, exist_ok=True)
        self.fs.pipe_file(f"{folder}/{QUEUE_TAG}", self.queue.encode())

    def _rotate(self, job_id: str, local: set[tuple[str, str]]) -> list[str]:
        """Delete from the root the checkpoints of the runs in ``local`` that are not in it;
        the ``name/step-N`` deleted."""
        gone: list[str] = []
        names = {n for n, _ in local}
        if not names:
            return gone  # only the runs the job still has locally are mirrored: nothing to list
        prefix = self.job_prefix(job_id)
        try:
            markers = self.fs.glob(f"{prefix}/*/step-*/{MARKER}")
        except FileNotFoundError:
            return gone
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot list {self._u(prefix)}: {_say(e)}",
                               f"cannot list the job's checkpoints on the shared root ({_kind(e)})") from None
        for m in markers:
            folder = m.rsplit("/", 1)[0]
            name, step = folder.rsplit("/", 2)[-2:]
            if name in names and (name, step) not in local:
                self._remove(folder)
                gone.append(f"{name}/{step}")
        return gone

    def _remove(self, folder: str) -> None:
        """Delete a checkpoint on the root, its marker first (never half visible)."""
        try:
            remove_checkpoint(self.fs, folder)
        except Exception as e:  # noqa: BLE001
            step = "/".join(folder.rsplit("/", 2)[-2:])
            raise StorageError(f"cannot delete {self._u(folder)}: {_say(e)}",
                               f"cannot delete checkpoint {step} from the shared root ({_kind(e)})") from None

    def job_ids(self) -> list[str]:
        """The ids of the job folders under ``<root>/jobs``."""
        top = f"{self.base}/jobs"
        try:
            self.fs.invalidate_cache(top)  # an object store's listing cache would hide new folders
            entries = self.fs.ls(top, detail=True)
        except FileNotFoundError:
            return []
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot list {self._u(top)}: {_say(e)}") from None
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def queue_of(self, job_id: str) -> Optional[str]:
        """The queue id a job's folder is tagged with (None: no tag)."""
        path = f"{self.base}/jobs/{job_id}/{QUEUE_TAG}"
        try:
            return self.fs.cat_file(path).decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot read {self._u(path)}: {_say(e)}") from None

    def delete_job(self, job_id: str) -> None:
        """Delete everything of a job on the root: its checkpoints (each marker first), then its
        tag last, so a sweep cut short finds the rest still tagged and ends it."""
        folder = f"{self.base}/jobs/{job_id}"
        try:
            markers = self.fs.glob(f"{folder}/{CHECKPOINTS}/*/step-*/{MARKER}")
        except FileNotFoundError:
            markers = []
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot list {self._u(folder)}: {_say(e)}") from None
        for m in markers:
            self._remove(m.rsplit("/", 1)[0])
        try:
            if self.fs.exists(f"{folder}/{CHECKPOINTS}"):
                self.fs.rm(f"{folder}/{CHECKPOINTS}", recursive=True)
            if self.fs.exists(f"{folder}/{QUEUE_TAG}"):
                self.fs.rm_file(f"{folder}/{QUEUE_TAG}")
            if self.fs.exists(folder):
                self.fs.rm(folder, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot delete {self._u(folder)}: {_say(e)}") from None

    def _u(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)


def _copy_counted(fd: int, out: Any, f: CheckpointFile) -> None:
    """Copy the ``f.size`` bytes the walk counted of the job's file ``fd`` to ``out``, no more
    (the job may grow it meanwhile, a sparse terabyte if it likes: what the bounds counted is
    what the root gets); :class:`Changed` if it holds fewer now (cut meanwhile)."""
    done = 0
    while done < f.size:
        chunk = os.pread(fd, min(CHUNK, f.size - done), done)
        if not chunk:
            raise Changed(f"{f.rel} was cut while it was copied")
        out.write(chunk)
        done += len(chunk)


def _listed(dfd: int, budget: list[int]) -> list[str]:
    """The names in the folder ``dfd``, at most ``budget[0]`` of them (taken off it; it goes
    below 0 when the folder holds more, which are left unlisted)."""
    names: list[str] = []
    with os.scandir(dfd) as it:
        for entry in it:
            budget[0] -= 1
            if budget[0] < 0:
                break
            names.append(entry.name)
    return names


def _kind(e: BaseException) -> str:
    """What went wrong, without the paths an error's text may name: the system error (No space
    left on device), else the error's type."""
    if isinstance(e, OSError) and e.errno:
        return e.strerror or os.strerror(e.errno)
    return type(e).__name__


def _say(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 500 else text[:500] + "..."


def load_options(path: Optional[str]) -> Optional[dict[str, Any]]:
    """fsspec storage options from a JSON file that only its owner may read (it may hold
    credentials); None without a file."""
    if not path:
        return None
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise ValueError(f"--shared-options {path} is mode {st.st_mode & 0o777:03o}: it may hold credentials, "
                         f"so only its owner may read it (chmod 600 {path})")
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"--shared-options {path} is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--shared-options {path} must hold a JSON object of fsspec storage options")
    return data


class _Local:
    """The job's local checkpoint folder, as the worker reads and writes it: folders opened with
    ``O_NOFOLLOW`` from the job folder down; with ``uid``, only that uid's regular files with one
    link are read, and what is written is made that uid's.

    Each folder's descriptor is closed as soon as it is used: the job makes as many folders as
    it likes there, and root's worker held one per folder listed until the push ended (some
    ten thousand ``step-*`` folders: EMFILE in every thread of the worker, the launches and
    reads of other users' jobs on the node included). Likewise its files: the walk of a
    checkpoint notes them (:class:`CheckpointFile`) and each is opened only when it is copied
    (it held one descriptor per file until the copy was done: a checkpoint of more files than
    the worker's RLIMIT_NOFILE did the same). A checkpoint nested over :data:`MAX_DEPTH` folders
    (the walk recurses once per level), holding over :data:`MAX_FILES` files and folders (root
    keeps a note of each one) or whose paths take over :data:`MAX_PATH_CHARS` characters in all
    (the notes hold them) is refused: :class:`Unfit`."""

    def __init__(self, job_dir: Path, uid: Optional[int], gid: Optional[int]):
        self.job_dir, self.uid, self.gid = job_dir, uid, gid

    def _open_dir(self, names: list[str], create: bool = False) -> int:
        fd = os.open(self.job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for name in names:
                if name in ("", ".", "..") or "/" in name:
                    raise OSError(f"bad name {name!r}")
                if create:
                    try:
                        os.mkdir(name, 0o700, dir_fd=fd)
                        made = True
                    except FileExistsError:
                        made = False
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
                st = os.fstat(fd)
                if self.uid is not None and st.st_uid not in (self.uid, os.geteuid()):
                    raise OSError(f"{name} belongs to uid {st.st_uid}")
                if create and made and self.uid is not None:
                    os.fchown(fd, self.uid, self.gid if self.gid is not None else -1)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _file(self, dfd: int, name: str) -> Optional[int]:
        return open_owned_file(dfd, name, self.uid)

    def has_at(self, folders: list[str]) -> bool:
        """Whether a complete checkpoint is in ``folders`` (names from the job folder down)."""
        try:
            dfd = self._open_dir(folders)
        except OSError:
            return False
        try:
            fd = self._file(dfd, MARKER)
        finally:
            os.close(dfd)
        if fd is None:
            return False
        os.close(fd)
        return True

    def complete(self) -> tuple[list[tuple[str, str, str]], bool]:
        """``(name, step-N, marker id)`` of every complete checkpoint here, and whether the
        listing stopped short: root lists at most :data:`MAX_FILES` names of runs and steps in
        all (a job's folder of millions of ``step-*`` folders took the worker's memory and time
        at every push); past that it looks no further, in the order the folders list them."""
        out: list[tuple[str, str, str]] = []
        budget = [MAX_FILES]
        try:
            root = self._open_dir([CHECKPOINTS])
        except OSError:
            return out, False
        try:
            names = sorted(_listed(root, budget))
        finally:
            os.close(root)
        for name in names:
            if name.startswith("."):
                continue
            try:
                nfd = self._open_dir([CHECKPOINTS, name])
            except OSError:
                continue
            try:
                steps = sorted(_listed(nfd, budget))
            finally:
                os.close(nfd)
            for step in steps:
                if not step.startswith("step-"):
                    continue
                try:
                    sfd = self._open_dir([CHECKPOINTS, name, step])
                except OSError:
                    continue
                try:
                    fd = self._file(sfd, MARKER)
                finally:
                    os.close(sfd)
                if fd is None:
                    continue
                st = os.fstat(fd)
                os.close(fd)
                out.append((name, step, f"{st.st_ino}-{st.st_mtime_ns}"))
        return out, budget[0] < 0

    def read_checkpoint(self, name: str, step: str) -> tuple[list[CheckpointFile], int, bytes]:
        """A checkpoint's files (none is held open), how many files and folders it holds (its
        marker included) and its marker's bytes. A file gone missing raises OSError; a link, a
        special, hard-linked or foreign file, or a checkpoint over a limit, :class:`Unfit`."""
        files: list[CheckpointFile] = []
        seen = [0, 0]
        self._walk([CHECKPOINTS, name, step], "", files, seen)
        dfd = self._open_dir([CHECKPOINTS, name, step])
        try:
            fd = self._file(dfd, MARKER)
        finally:
            os.close(dfd)
        if fd is None:
            raise OSError("its marker is gone")
        with os.fdopen(fd, "rb") as f:
            marker = f.read(1_000_000)
        return files, seen[0], marker

    def _walk(self, names: list[str], rel: str, out: list[CheckpointFile], seen: list[int]) -> None:
        """Note the files under the folder ``names`` (``rel`` under the checkpoint) in ``out``;
        ``seen``: the names listed so far, and the characters of their paths."""
        if rel.count("/") >= MAX_DEPTH:
            raise Unfit(f"its folder {rel} is nested over {MAX_DEPTH} folders deep, the most a checkpoint may be; "
                        f"save it with fewer levels of folders")
        subs: list[str] = []
        dfd = self._open_dir(names)
        try:
            with os.scandir(dfd) as it:
                entries: list[str] = []
                for listed in it:
                    seen[0] += 1
                    if seen[0] > MAX_FILES:
                        raise Unfit(f"it holds over {MAX_FILES:,} files and folders, the most a checkpoint may hold; "
                                    f"save it in fewer, larger files")
                    entries.append(listed.name)
            for entry in sorted(entries):
                if entry == MARKER and not rel:
                    continue
                st = os.stat(entry, dir_fd=dfd, follow_symlinks=False)
                sub = f"{rel}/{entry}" if rel else entry
                seen[1] += len(sub)
                if seen[1] > MAX_PATH_CHARS:
                    raise Unfit(f"the paths of its files and folders take over {MAX_PATH_CHARS:,} characters in all, "
                                f"the most a checkpoint's may; save it with fewer files, or shorter names and fewer "
                                f"levels of folders")
                if stat.S_ISDIR(st.st_mode):
                    subs.append(entry)
                elif stat.S_ISREG(st.st_mode):
                    if self.uid is not None and st.st_uid != self.uid:
                        raise Unfit(f"its file {sub} is not the job's own (another user's file in it); a checkpoint "
                                    f"holds the job's own files only: save a copy of it there instead")
                    if self.uid is not None and st.st_nlink != 1:
                        raise Unfit(f"its file {sub} is a hard link ({st.st_nlink} names): a checkpoint holds files "
                                    f"of one name only: save a copy of it there instead")
                    out.append(CheckpointFile(sub, st.st_dev, st.st_ino, st.st_size))
                else:
                    kind = "a link" if stat.S_ISLNK(st.st_mode) else "a special file (FIFO, socket or device)"
                    raise Unfit(f"its {sub} is {kind}: a checkpoint holds files and folders only: save the "
                                f"file itself there instead")
        finally:
            os.close(dfd)
        for entry in subs:  # one folder open at a time
            self._walk([*names, entry], f"{rel}/{entry}" if rel else entry, out, seen)

    def open_each(self, name: str, step: str,
                  files: list[CheckpointFile]) -> Generator[tuple[CheckpointFile, int], None, None]:
        """``(file, descriptor)`` of each of ``files`` (of :meth:`read_checkpoint`), opened in
        turn and closed when the next is asked for: through its folder's descriptor, without
        following a link, only if it is still the job's own regular file with one link, the
        very file the walk found, of the size it found (else :class:`Changed`). At most one
        folder and one file are open at once. Close the iterator (``contextlib.closing``) if
        not run to its end."""
        folder: Optional[str] = None
        dfd = -1
        try:
            for f in files:
                here, _, base = f.rel.rpartition("/")
                if here != folder:
                    if dfd >= 0:
                        os.close(dfd)
                        dfd = -1
                    try:
                        dfd = self._open_dir([CHECKPOINTS, name, step, *(here.split("/") if here else [])])
                    except OSError as e:
                        raise Changed(f"{f.rel}: {e}") from None
                    folder = here
                fd = self._file(dfd, base)
                if fd is None:
                    raise Changed(f"{f.rel} is gone")
                try:
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != (f.dev, f.ino):
                        raise Changed(f"{f.rel} is another file")
                    if st.st_size != f.size:
                        raise Changed(f"{f.rel} is of another size")
                    yield f, fd
                finally:
                    os.close(fd)
        finally:
            if dfd >= 0:
                os.close(dfd)

    def write(self, folders: list[str], name: str, data: Any) -> None:
        """Create ``folders/name`` (bytes or a readable file object), the job's own, through a
        fresh name and a rename."""
        dfd = self._open_dir(folders, create=True)
        try:
            self._write_at(dfd, name, data)
        finally:
            os.close(dfd)

    def _write_at(self, dfd: int, name: str, data: Any) -> None:
        tmp = f".{name}.{uuid.uuid4().hex[:12]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                if isinstance(data, bytes):
                    f.write(data)
                else:
                    shutil.copyfileobj(data, f, CHUNK)
            if self.uid is not None:
                os.fchown(fd, self.uid, self.gid if self.gid is not None else -1)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

