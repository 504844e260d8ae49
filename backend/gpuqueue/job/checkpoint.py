"""Checkpoints that a resume can trust: atomic, rotated, with the best one kept.

    ckpt = gpuqueue.Checkpointer(every_steps=500, max_checkpoints=3, monitor="val_loss", mode="min")
    state = ckpt.load()                    # the latest complete checkpoint, or None
    start = state["step"] + 1 if state else 0
    for step in range(start, total):
        ...
        ckpt.maybe_save(step, lambda: {"step": step, "model": model.state_dict(),
                                       "opt": opt.state_dict()}, metrics={"val_loss": v})
        if gpuqueue.should_stop():
            ckpt.save(step, {...}); break

Layout under the job's prefix (default ``$GPUQUEUE_JOB_DIR/checkpoints/<name>``; the job folder
is shared by all attempts of a job, so a requeued attempt finds what the previous one saved)::

    step-000000042/state.pt     torch.save of the state (and/or files a writer put there)
    step-000000042/COMPLETE     JSON {step, metrics, time, files}: written last

A save writes into a temporary folder, fsyncs every file, renames the folder into place and
only then writes ``COMPLETE`` (itself through a temporary file, fsync, rename). Readers list only
folders with ``COMPLETE``, so a crash at any point leaves at worst an ignored, later deleted,
partial folder. On object stores (``s3://``, ``gs://``: any fsspec URL) the files are uploaded
first and the marker last, which gives the same guarantee.
"""

from __future__ import annotations

import builtins  # "list" in Checkpointer's annotations is its method list()
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Union

from . import jobapi

MARKER = "COMPLETE"


def remove_checkpoint(fs: Any, folder: str) -> None:
    """Delete a checkpoint folder on fsspec file system ``fs``, its marker first (so it is never
    half visible); a folder already gone is fine."""
    try:
        if fs.exists(f"{folder}/{MARKER}"):
            fs.rm_file(f"{folder}/{MARKER}")
        if fs.exists(folder):
            fs.rm(folder, recursive=True)
    except FileNotFoundError:
        pass
STATE_FILE = "state.pt"
StateArg = Union[None, dict[str, Any], Callable[[], Any], Any]


@dataclass(frozen=True)
class CheckpointInfo:
    """One complete checkpoint."""

    step: int
    path: str  # the checkpoint folder (local path or fsspec URL)
    metrics: dict[str, Any] = field(default_factory=dict)
    time: float = 0.0
    files: tuple[str, ...] = ()

    def file(self, name: str) -> str:
        """Path/URL of a file inside this checkpoint."""
        return self.path.rstrip("/") + "/" + name


def default_root() -> str:
    """Where checkpoints go when no directory is given."""
    env = os.environ.get("GPUQUEUE_CHECKPOINT_DIR")
    if env:
        return env
    job_dir = os.environ.get("GPUQUEUE_JOB_DIR")
    if job_dir:
        return os.path.join(job_dir, "checkpoints")
    return os.path.abspath("checkpoints")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: str) -> list[str]:
    """fsync every file and folder under ``path``; the relative file names."""
    names = []
    for root, dirs, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())
            names.append(os.path.relpath(p, path))
        for d in dirs:
            _fsync_dir(os.path.join(root, d))
    _fsync_dir(path)
    return sorted(names)


class Checkpointer:
    """Saves and finds checkpoints of one training run (see the module docstring).

    ``directory``: a folder or fsspec URL; inside a job a given directory gets the job id as a
    prefix, so jobs sharing storage never see each other's checkpoints. ``name`` separates
    several runs inside one job. ``every_steps`` / ``every_s``: when ``maybe_save`` saves.
    ``max_checkpoints``: how many recent ones to keep (the best one is kept besides).
    ``monitor`` / ``mode``: the metric that ranks checkpoints, lower (``min``) or higher is better.
    """

    def __init__(
        self,
        directory: Optional[str] = None,
        *,
        name: str = "default",
        every_steps: Optional[int] = None,
        every_s: Optional[float] = None,
        max_checkpoints: Optional[int] = 3,
        monitor: Optional[str] = None,
        mode: Literal["min", "max"] = "min",
        storage_options: Optional[dict[str, Any]] = None,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError("max_checkpoints must be at least 1 (or None to keep all)")
        if every_steps is not None and every_steps < 1:
            raise ValueError("every_steps must be a positive number of steps")
        import fsspec

        root = directory or default_root()
        job = os.environ.get("GPUQUEUE_JOB_ID")
        if job and (directory or os.environ.get("GPUQUEUE_CHECKPOINT_DIR")):  # a folder jobs may share
            root = root.rstrip("/") + "/" + job
        self.url = root.rstrip("/") + "/" + name
        self.fs, self._root_path = fsspec.url_to_fs(self.url, **(storage_options or {}))
        self.local = type(self.fs).__name__ == "LocalFileSystem"
        self.name = name
        self.every_steps = every_steps
        self.every_s = every_s
        self.max_checkpoints = max_checkpoints
        self.monitor = monitor
        self.mode = mode
        self._last_save = time.monotonic()
        jobapi.watch_stop()  # a notice must let us save, not kill the process
        if jobapi.is_main_process():
            self._cleanup()

    # -- naming ------------------------------------------------------------------------------
    def _step_path(self, step: int) -> str:
        return f"{self._root_path.rstrip('/')}/step-{step:09d}"

    def _url(self, path: str) -> str:
        return path if self.local else self.fs.unstrip_protocol(path)

    # -- listing -----------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest step first."""
        try:
            markers = self.fs.glob(f"{self._root_path.rstrip('/')}/step-*/{MARKER}")
        except (FileNotFoundError, OSError):
            return []
        out = []
        for m in markers:
            try:
                meta = json.loads(self.fs.cat_file(m))
            except (FileNotFoundError, OSError, ValueError):
                continue  # being deleted, or torn: not complete
            folder = m.rsplit("/", 1)[0]
            out.append(
                CheckpointInfo(
                    step=int(meta["step"]),
                    path=self._url(folder),
                    metrics=meta.get("metrics") or {},
                    time=float(meta.get("time", 0.0)),
                    files=tuple(meta.get("files") or ()),
                )
            )
        return sorted(out, key=lambda c: c.step)

    def latest(self) -> Optional[CheckpointInfo]:
        """The complete checkpoint with the highest step, or None."""
        cps = self.list()
        return cps[-1] if cps else None

    def best(self) -> Optional[CheckpointInfo]:
        """The complete checkpoint with the best ``monitor`` metric (None if none has it)."""
        return self._best_of(self.list())

    def _best_of(self, cps: builtins.list[CheckpointInfo]) -> Optional[CheckpointInfo]:
        if not self.monitor:
            return None
        scored = [c for c in cps if isinstance(c.metrics.get(self.monitor), (int, float))]
        if not scored:
            return None
        key = lambda c: c.metrics[self.monitor]  # noqa: E731
        return min(scored, key=key) if self.mode == "min" else max(scored, key=key)

    # -- saving ------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``maybe_save`` would save at ``step`` (schedule or stop notice)."""
        if jobapi.stop_notice():
            return True
        if self.every_steps and step > 0 and step % self.every_steps == 0:
            return True
        return bool(self.every_s and time.monotonic() - self._last_save >= self.every_s)

    def maybe_save(self, step: int, state: StateArg, metrics: Optional[dict[str, Any]] = None) -> Optional[CheckpointInfo]:
        """Save if ``due(step)``. ``state`` may be a function returning it, so nothing is
        built on the steps that do not save."""
        if not self.due(step):
            return None
        return self.save(step, state, metrics=metrics)

    def save(
        self,
        step: int,
        state: StateArg = None,
        *,
        metrics: Optional[dict[str, Any]] = None,
        writer: Optional[Callable[[str], None]] = None,
    ) -> Optional[CheckpointInfo]:
        """Save a checkpoint at ``step``: ``state`` through ``torch.save``, and/or whatever
        ``writer(folder)`` writes into a local folder. Only rank 0 writes (others get None)."""
        if not jobapi.is_main_process():
            return None
        if callable(state) and not isinstance(state, dict):
            state = state()
        metrics = {k: jobapi._clean(v) for k, v in (metrics or {}).items()}
        if self.local:
            os.makedirs(self._root_path, exist_ok=True)
            tmp = os.path.join(self._root_path, f".tmp-step-{step}-{uuid.uuid4().hex[:8]}")
            os.mkdir(tmp)
        else:
            tmp = tempfile.mkdtemp(prefix="gpuqueue-ckpt-")
        try:
            if state is not None:
                import torch

                with open(os.path.join(tmp, STATE_FILE), "wb") as f:
                    torch.save(state, f)
            if writer is not None:
                writer(tmp)
            files = _fsync_tree(tmp)
            final = self._step_path(step)
            self._remove(final)  # an older save of the same step (a rerun after resume)
            saved_at = time.time()
            meta = {"step": int(step), "metrics": metrics, "time": saved_at, "files": files}
            if self.local:
                os.rename(tmp, final)
                _fsync_dir(self._root_path)
                mtmp = os.path.join(final, MARKER + ".tmp")
                with open(mtmp, "w") as f:
                    json.dump(meta, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(mtmp, os.path.join(final, MARKER))
                _fsync_dir(final)
            else:
                self.fs.put(tmp.rstrip("/") + "/", final, recursive=True)
                self.fs.pipe_file(f"{final}/{MARKER}", json.dumps(meta).encode())
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        self._last_save = time.monotonic()
        info = CheckpointInfo(step=int(step), path=self._url(final), metrics=metrics, time=saved_at, files=tuple(files))
        cps = self.list()
        best = self._best_of(cps)
        rotated = self._rotate(cps, best)
        is_best = best is not None and best.step == info.step
        jobapi.emit(  # "rotated": the older steps this save's rotation deleted (viewers drop them)
            "checkpoint",
            {"step": info.step, "path": info.path, "metrics": metrics, "best": is_best, "name": self.name,
             "rotated": rotated},
        )
        return info

    def _remove(self, folder: str) -> None:
        remove_checkpoint(self.fs, folder)

    def _rotate(self, cps: builtins.list[CheckpointInfo], best: Optional[CheckpointInfo]) -> builtins.list[int]:
        """Delete all but the newest ``max_checkpoints`` and the best; the steps deleted."""
        if self.max_checkpoints is None:
            return []
        keep = {c.step for c in cps[-self.max_checkpoints :]}
        if best is not None:
            keep.add(best.step)
        rotated = []
        for c in cps:
            if c.step not in keep:
                self._remove(self._step_path(c.step))
                rotated.append(c.step)
        return rotated

    def _cleanup(self) -> None:
        """Delete what interrupted saves left: temporary folders and folders with no marker."""
        try:
            entries = self.fs.ls(self._root_path, detail=False)
        except (FileNotFoundError, OSError):
            return
        for e in entries:
            base = e.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(".tmp-step-"):
                self.fs.rm(e, recursive=True)
            elif base.startswith("step-") and not self.fs.exists(f"{e.rstrip('/')}/{MARKER}"):
                self.fs.rm(e, recursive=True)

    # -- loading -----------------------------------------------------------------------------
    def resume_point(self) -> Optional[CheckpointInfo]:
        """What a resume starts from: this run's latest complete checkpoint, else the one named
        by ``GPUQUEUE_RESUME_FROM`` (a job started with ``--resume-from``), else None."""
        latest = self.latest()
        if latest is not None:
            return latest
        src = os.environ.get("GPUQUEUE_RESUME_FROM")
        if src:
            return _info_from_path(src)
        return None

    def local_path(self, info: CheckpointInfo) -> str:
        """A local folder with the checkpoint's files (downloaded for remote storage)."""
        if self.local or "://" not in info.path:
            return info.path
        dest = tempfile.mkdtemp(prefix=f"gpuqueue-ckpt-{info.step}-")
        self.fs.get(info.path.rstrip("/") + "/", dest, recursive=True)
        return dest

    def load(
        self,
        which: Union[None, str, CheckpointInfo] = None,
        map_location: Any = "cpu",
    ) -> Optional[Any]:
        """The saved state: of ``which`` (``None``/``"latest"``: the resume point, ``"best"``,
        a ``CheckpointInfo`` or a path), or None if there is nothing to load."""
        if which is None or which == "latest":
            info = self.resume_point()
        elif which == "best":
            info = self.best()
        elif isinstance(which, CheckpointInfo):
            info = which
        else:
            info = _info_from_path(str(which))
        if info is None:
            return None
        import fsspec
        import torch

        path = info.file(STATE_FILE) if not info.path.endswith(".pt") else info.path
        with fsspec.open(path, "rb") as f:
            state = torch.load(f, map_location=map_location, weights_only=False)
        jobapi.info(f"loaded checkpoint step {info.step} from {info.path}")
        return state


def _info_from_path(path: str) -> Optional[CheckpointInfo]:
    """A CheckpointInfo for a checkpoint folder (or file) given by path; None if incomplete."""
    import fsspec

    fs, p = fsspec.url_to_fs(path)
    if p.endswith(".pt") and fs.exists(p):
        return CheckpointInfo(step=0, path=path)
    try:
        meta = json.loads(fs.cat_file(p.rstrip("/") + "/" + MARKER))
    except (FileNotFoundError, OSError, ValueError):
        if fs.isdir(p):  # a foreign checkpoint folder (e.g. a HF checkpoint-N): trust it
            return CheckpointInfo(step=0, path=path.rstrip("/"))
        raise FileNotFoundError(f"no checkpoint at {path}: give a checkpoint folder or a .pt file") from None
    return CheckpointInfo(
        step=int(meta["step"]), path=path.rstrip("/"), metrics=meta.get("metrics") or {},
        time=float(meta.get("time", 0.0)), files=tuple(meta.get("files") or ()),
    )
