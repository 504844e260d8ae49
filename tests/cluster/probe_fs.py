"""A stand-in for a slow network store in the shared-root tests: a real local folder reached
through fsspec protocol ``probefile://`` (a :class:`LocalFileSystem` subclass) whose file writes
take ``delay`` seconds each (as an upload to a remote store does) and which appends each listing
(``ls``, ``find``, ``glob``, outermost calls only) and each write to the file ``calls`` as
``<what> <path>`` lines.

A test registers it in its own process with :func:`register`, and in the worker processes it
starts with :func:`plugin_dir`: a folder that, put on their ``PYTHONPATH``, declares the protocol
as an fsspec plugin (an ``fsspec.specs`` entry point), as an installed package would."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

PROTOCOL = "probefile"
_depth = threading.local()


class ProbeFileSystem(LocalFileSystem):
    """A local folder with slow writes and a log of listings (see the module)."""

    protocol = (PROTOCOL,)

    def __init__(self, delay: float = 0.0, calls: Optional[str] = None, **kw: Any):
        super().__init__(**kw)
        self.delay = float(delay)
        self.calls = calls

    def _note(self, what: str, path: Any) -> None:
        if self.calls:
            with open(self.calls, "a") as f:
                f.write(f"{what} {path}\n")

    def _listing(self, what: str, path: Any, call: Any) -> Any:
        outer = not getattr(_depth, "n", 0)
        if outer:
            self._note(what, path)
        _depth.n = getattr(_depth, "n", 0) + 1
        try:
            return call()
        finally:
            _depth.n -= 1

    def ls(self, path: Any, detail: bool = False, **kw: Any) -> Any:
        return self._listing("ls", path, lambda: super(ProbeFileSystem, self).ls(path, detail=detail, **kw))

    def find(self, path: Any, *a: Any, **kw: Any) -> Any:
        return self._listing("find", path, lambda: super(ProbeFileSystem, self).find(path, *a, **kw))

    def glob(self, path: Any, *a: Any, **kw: Any) -> Any:
        return self._listing("glob", path, lambda: super(ProbeFileSystem, self).glob(path, *a, **kw))

    def _open(self, path: Any, mode: str = "rb", *a: Any, **kw: Any) -> Any:
        if "w" in mode and ".probe-" not in str(path):  # the worker's start check stays quick
            self._note("write", path)
            time.sleep(self.delay)
        return super()._open(path, mode, *a, **kw)


def register() -> None:
    """Make ``probefile://`` known in this process."""
    fsspec.register_implementation(PROTOCOL, ProbeFileSystem, clobber=True)


def plugin_dir(where: Path) -> Path:
    """A folder declaring ``probefile://`` as an fsspec plugin, for a subprocess's PYTHONPATH
    (beside the path that finds this module as ``cluster.probe_fs``)."""
    info = where / "gq_probe_fs-0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gq-probe-fs\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[fsspec.specs]\n{PROTOCOL} = cluster.probe_fs:ProbeFileSystem\n")
    return where
