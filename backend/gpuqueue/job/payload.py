"""Packaging a notebook cell into a job payload, and unpacking it in the job.

The kernel side finds the names a cell reads and assigns (from its AST), pickles each input on
its own (a **preflight**: an object that cannot travel is named before anything is queued), and
builds one payload. Modules travel as imports, notebook-defined functions and classes by value
(cloudpickle does this for ``__main__`` objects), data by value.
"""

from __future__ import annotations

import ast
import hashlib
import pickle
import platform
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import cloudpickle

PAYLOAD_FORMAT = 1
DEFAULT_MAX_PAYLOAD = 200 * 1024 * 1024

# Names IPython puts in the user namespace that a job must never receive or return.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


class PreflightError(ValueError):
    """An input cannot travel to the job, or the payload is too big. The message says the fix."""


@dataclass
class CellNames:
    """What a cell reads from and assigns to the notebook namespace."""

    reads: set[str] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)


def analyze_cell(source: str) -> CellNames:
    """Names the cell reads (anywhere) and assigns (at its top level), from its AST.

    Raises SyntaxError as Python would.
    """
    tree = ast.parse(source, "<cell>", "exec")
    names = CellNames()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            names.reads.add(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            names.reads.add(node.target.id)
    seen: set[str] = set()
    for name in _top_level_writes(tree.body):
        if name not in seen and not _private(name):
            seen.add(name)
            names.writes.append(name)
    return names


def _top_level_writes(body: Iterable[ast.stmt]) -> Iterable[str]:
    """Names bound in the module scope (not inside functions, classes or comprehensions)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt.name
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name != "*":
                    yield (alias.asname or alias.name).split(".")[0]
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                yield node.id
            elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                yield node.target.id
        # nested blocks (if/for/while/with/try) are walked above; defs inside them:
        for node in ast.walk(stmt):
            if node is not stmt and isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ):
                yield node.name


def _private(name: str) -> bool:
    return name.startswith("_") or name in _IPYTHON_NAMES


def source_hash(source: str) -> str:
    """A short stable hash of a cell's source (re-attach matches on it)."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def build_payload(
    source: str,
    namespace: dict[str, Any],
    inputs: Optional[list[str]] = None,
    outputs: Optional[list[str]] = None,
    max_bytes: int = DEFAULT_MAX_PAYLOAD,
) -> tuple[bytes, list[str], list[str]]:
    """Pickle the cell and its inputs. Returns (payload, input names, output names).

    ``inputs``/``outputs`` override what the AST says. Raises PreflightError naming the
    variable that cannot travel and why, or the largest inputs when the payload is too big.
    """
    names = analyze_cell(source)
    if inputs is None:
        inputs = sorted(n for n in names.reads if n in namespace and not _private(n))
    else:
        missing = [n for n in inputs if n not in namespace]
        if missing:
            raise PreflightError(
                f"--inputs names {', '.join(missing)}, which the notebook does not define"
            )
    if outputs is None:
        outputs = names.writes
    modules: dict[str, str] = {}
    pickled: dict[str, bytes] = {}
    for name in inputs:
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
            continue
        try:
            pickled[name] = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - any pickling failure is the user's to know
            raise PreflightError(
                f"input {name!r} ({type(value).__name__}) cannot be sent to the job: "
                f"{type(e).__name__}: {e}. Send what it is made from instead (a file path, a "
                f"config) and rebuild it inside the cell, or leave it out with --inputs."
            ) from None
    total = sum(len(b) for b in pickled.values()) + len(source)
    if total > max_bytes:
        largest = sorted(pickled.items(), key=lambda kv: -len(kv[1]))[:3]
        listing = ", ".join(f"{n} ({_mb(len(b))})" for n, b in largest)
        raise PreflightError(
            f"the cell's inputs are {_mb(total)}, over the {_mb(max_bytes)} limit; the largest: "
            f"{listing}. Save big data to a file and pass its path instead."
        )
    payload = pickle.dumps(
        {
            "format": PAYLOAD_FORMAT,
            "python": platform.python_version(),
            "cloudpickle": cloudpickle.__version__,
            "source": source,
            "modules": modules,
            "inputs": pickled,
            "outputs": list(outputs),
            "sys_path": [p for p in sys.path if p],
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    return payload, sorted(list(modules) + list(pickled)), list(outputs)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def version_mismatch(payload: dict[str, Any]) -> Optional[str]:
    """A sentence if this process cannot safely unpickle what the payload's sender pickled."""
    sent_py = payload.get("python", "")
    here_py = platform.python_version()
    if sent_py.split(".")[:2] != here_py.split(".")[:2]:
        return (
            f"the notebook runs Python {sent_py} but the job runs Python {here_py}: run the job "
            f"with the same interpreter (the cell's --python, or install matching versions)"
        )
    sent_cp = str(payload.get("cloudpickle", ""))
    if sent_cp.split(".")[0] != cloudpickle.__version__.split(".")[0]:
        return (
            f"the notebook has cloudpickle {sent_cp} but the job has {cloudpickle.__version__}: "
            f"install the same major version in both environments"
        )
    return None


def pack_results(namespace: dict[str, Any], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    """Pickle the names a cell assigned. Returns (blob, {name: why it could not travel back})."""
    values: dict[str, bytes] = {}
    unreturnable: dict[str, str] = {}
    for name in outputs:
        if name not in namespace:
            continue
        value = namespace[name]
        if isinstance(value, types.ModuleType):
            values[name] = pickle.dumps(_ModuleRef(value.__name__))
            continue
        try:
            values[name] = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001
            unreturnable[name] = f"{type(e).__name__}: {e}"
    return pickle.dumps({"values": values, "unreturnable": unreturnable}), unreturnable


@dataclass
class _ModuleRef:
    """A module assigned by the cell comes back as an import, not by value."""

    name: str


def unpack_results(blob: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """(values to put in the notebook, {name: reason} for those that cannot be loaded here)."""
    import importlib

    data = pickle.loads(blob)
    out: dict[str, Any] = {}
    failed: dict[str, str] = dict(data.get("unreturnable", {}))
    for name, raw in data["values"].items():
        try:
            value = cloudpickle.loads(raw)
            if isinstance(value, _ModuleRef):
                value = importlib.import_module(value.name)
            out[name] = value
        except Exception as e:  # noqa: BLE001
            failed[name] = f"cannot be loaded in the notebook: {type(e).__name__}: {e}"
    return out, failed
