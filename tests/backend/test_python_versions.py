"""The Python versions the package claims (``requires-python >= 3.10``) are the ones it runs on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["backend", "jupyter_gpuqueue", "scripts", "benchmarks", "tests"]


def _python310() -> str:
    """A working Python 3.10 interpreter ($GPUQUEUE_PYTHON310, pyenv's, or on PATH), or ""."""
    for exe in (os.environ.get("GPUQUEUE_PYTHON310"), "/root/.pyenv/versions/3.10.13/bin/python3.10",
                shutil.which("python3.10")):
        if exe and subprocess.run([exe, "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
                                  capture_output=True).returncode == 0:
            return exe
    return ""


PY310 = _python310()


def test_requires_python_matches_the_sources() -> None:
    """vermin finds nothing in the sources newer than 3.10 (e.g. ``tomllib`` without ``tomli``)."""
    from gpuqueue.queue.config import tomllib  # tomli on 3.10

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.10"
    assert meta["tool"]["ruff"]["target-version"] == "py310"
    assert any(d.startswith("tomli") and "python_version < '3.11'" in d for d in meta["project"]["dependencies"])
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent)) or "vermin"
    r = subprocess.run([vermin, "--target=3.10-", "--no-tips", "--violations", "--eval-annotations", *SOURCES],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_binder_declares_its_python() -> None:
    assert (ROOT / "binder" / "runtime.txt").read_text().strip() in ("python-3.10", "python-3.11", "python-3.12")


@pytest.mark.skipif(not PY310, reason="no Python 3.10 here (set GPUQUEUE_PYTHON310)")
def test_the_sources_compile_on_python_310(tmp_path: Path) -> None:
    """Every module parses on 3.10 (vermin checks the names; this checks the grammar)."""
    r = subprocess.run([PY310, "-m", "compileall", "-q", "-f", "backend", "jupyter_gpuqueue"], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPYCACHEPREFIX=str(tmp_path)))
    assert r.returncode == 0, r.stdout + r.stderr
