"""Import, while a foreground ``%%train`` cell waits, the modules its names will bring back.

A cell's ``import torch`` comes back to the notebook as an import (``gpuqueue.job.payload``
sends modules by name), and its tensors need torch to be unpickled: so the kernel imports those
modules anyway when the job ends, and ``import torch`` takes seconds on a CPU machine. Done in
a background thread from the submit on, that time overlaps with the job's own instead of coming
after it. Only the modules of the cell's top-level imports whose names come back are imported:
exactly what bringing the results back would import (and if one fails here, it is left to that
step, which reports it as before).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import threading
from typing import Iterable, Optional


def modules_coming_back(source: str, outputs: Iterable[str]) -> list[str]:
    """The modules that the cell's top-level imports bind to names in ``outputs``, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    wanted = set(outputs)
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if (a.asname or a.name.split(".")[0]) in wanted:
                    found.append(a.name if a.asname else a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if any((a.asname or a.name) in wanted for a in node.names if a.name != "*"):
                found.append(node.module)
    return list(dict.fromkeys(found))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def prefetch(modules: Iterable[str]) -> Optional[threading.Thread]:
    """Start importing ``modules`` (those not imported yet and installed) in a daemon thread;
    returns it, or None when there is nothing to import."""
    todo = [m for m in modules if m not in sys.modules and _importable(m)]
    if not todo:
        return None

    def run() -> None:
        for name in todo:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - bringing the results back reports it
                pass

    t = threading.Thread(target=run, name="gpuqueue-prefetch", daemon=True)
    t.start()
    return t
