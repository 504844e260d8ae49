"""The engine type-checks: mypy (``[tool.mypy]`` in pyproject.toml, pydantic's plugin on) on the
seams (the queue's verbs, the REST handlers typed on them, the Jupyter handlers built from them
and the scheduler protocol, with every implementation checked against its protocol in
``tests/backend/seams_typecheck.py``) and on every module of the engine (``backend/gpuqueue``)
and of the Jupyter extension. A type error in any of them fails this test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("mypy", reason="mypy is in the dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the file's runs (the second reads the first's analysis of the engine)."""
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_seams_type_check(cache: Path) -> None:
    out = _mypy(cache=cache)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def test_a_verb_with_the_wrong_signature_is_a_type_error(tmp_path: Path, cache: Path) -> None:
    bad = (
        "from gpuqueue.queue.verbs import Caller, QueueVerbs\n"
        "from gpuqueue.embedded.service import QueueService\n"
        "class Half(QueueService):\n"
        "    def cancel(self, caller: Caller, job_id: int) -> None: ...\n"
        "def seam(s: Half) -> QueueVerbs:\n"
        "    return s\n"
    )
    (tmp_path / "half.py").write_text(bad)
    out = _mypy(str(tmp_path / "half.py"), cache=cache)
    assert out.returncode == 1
    assert 'Incompatible return value type (got "Half", expected "QueueVerbs")' in out.stdout
    assert "def cancel(self, caller: Caller, job_id: int) -> None" in out.stdout
