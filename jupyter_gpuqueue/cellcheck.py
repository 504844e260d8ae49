"""Checks of a ``%%train`` cell made in the kernel before anything is queued, and what the
user is told about them: a job may wait hours for its GPUs, so what would stop it at its first
line is said now."""

from __future__ import annotations

import ast
import builtins
import pickle
import symtable

def syntax_error_message(e: SyntaxError) -> str:
    """What a cell the job could not compile is told, in the notebook's terms: IPython's own
    syntax (``!cmd``, ``%magic``) and top-level ``await`` work in the notebook, not in a job."""
    where = f"the cell has a syntax error at line {e.lineno}"
    line = (e.text or "").strip()
    if line[:1] in ("!", "%"):
        return (f"{where}: {line!r} is IPython syntax, and a job runs plain Python: "
                "use subprocess.run([...]) for a shell command, and leave magics out")
    if "await" in (e.msg or "") and "outside" in (e.msg or ""):
        return (f"{where}: {e.msg} (the notebook allows a top-level await, a job does not): "
                "put it in an async function and run that with asyncio.run(...)")
    return f"{where}: {e.msg}"


def largest_inputs(refusal: str, payload: bytes) -> str:
    """For a server's "the payload is N MB, over the M MB limit" (its limit may be lower than the
    kernel's own check): which of the cell's inputs make it big. Reads only the payload's outer
    dict, whose inputs are still pickled bytes."""
    if not refusal.startswith("the payload is"):
        return ""
    try:
        inputs: dict[str, bytes] = pickle.loads(payload).get("inputs") or {}
    except Exception:  # noqa: BLE001 - the refusal stands without the listing
        return ""
    ranked = sorted(inputs.items(), key=lambda kv: -len(kv[1]))
    largest = [kv for kv in ranked[:3] if len(kv[1]) >= 50_000] or ranked[:1]  # not the tiny ones
    if not largest:
        return ""
    listing = ", ".join(f"{name} ({len(raw) / 1e6:.1f} MB)" for name, raw in largest)
    return f". The largest inputs: {listing} (save them to a file and read it in the cell)"


def undefined_names(cell: str, sent: list[str]) -> list[str]:
    """Names the cell reads (in its own code, functions, lambdas, classes) that are neither
    sent with it (``sent``: its inputs) nor bound by it nor builtins: in the job they raise
    NameError. Empty when the cell has a star import (its names are not known here)."""
    tree = ast.parse(cell)
    if any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in ast.walk(tree)):
        return []
    top = symtable.symtable(cell, "<gpuqueue-cell>", "exec")
    bound: set[str] = set()
    read: list[str] = []

    def walk(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            name = sym.get_name()
            if table is top and (sym.is_assigned() or sym.is_imported() or sym.is_namespace()):
                bound.add(name)
            if sym.is_declared_global() and sym.is_assigned():
                bound.add(name)  # `global x; x = ...` in a function
            if sym.is_referenced() and (table is top or sym.is_global()) and name not in read:
                read.append(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    known = bound | set(sent) | set(dir(builtins))
    return [n for n in read if n not in known and not (n.startswith("__") and n.endswith("__"))]


def undefined_names_warning(cell: str, sent: list[str]) -> str:
    """The warning for :func:`undefined_names`, or "" when there are none."""
    missing = undefined_names(cell, sent)
    if not missing:
        return ""
    return (f"[gpuqueue] warning: the cell reads {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} neither sent with it (a notebook name) nor "
            "defined in the cell: in the job that line stops with a NameError")
