"""The README's test command: ``bash scripts/test.sh`` runs the suite on every CPU, and
``GPUQUEUE_TEST_WORKERS=0`` runs it one by one in one process (the README says so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_line() -> str:
    """The command scripts/test.sh ends with (the rest of the script installs)."""
    lines = [ln for ln in (ROOT / "scripts" / "test.sh").read_text().splitlines() if ln.strip()]
    assert "pytest" in lines[-1], "scripts/test.sh must end with its pytest command"
    return lines[-1]


@pytest.mark.parametrize("workers, expected", [("0", {"main"}), ("2", {"gw0", "gw1"})])
def test_test_workers_setting_decides_how_many_processes_run_the_tests(tmp_path: Path, workers: str,
                                                                       expected: set[str]) -> None:
    # two test files that record which pytest process ran them (xdist names its workers gw0...)
    for name in ("a", "b"):
        (tmp_path / f"test_{name}.py").write_text(
            "import os, pathlib\n"
            "def test_where():\n"
            f"    pathlib.Path({str(tmp_path)!r}, 'ran-{name}').write_text(os.environ.get('PYTEST_XDIST_WORKER', 'main'))\n")
    # (this test may itself run in an xdist worker: its variables must not reach the inner run)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env = {**env, "GPUQUEUE_TEST_WORKERS": workers, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", pytest_line(), "test.sh", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    ran = {(tmp_path / f"ran-{n}").read_text() for n in ("a", "b")}
    # with 0 both files run in pytest's own process; with 2, in xdist's workers (loadfile may
    # give both files to one of them)
    assert ran and ran <= expected
