"""The GPU check script on a machine without a GPU: a clear message, exit 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.hardware import needs_no_nvidia_gpu

ROOT = Path(__file__).resolve().parents[2]


@needs_no_nvidia_gpu  # with a GPU the script runs the real check (minutes): run it by hand
def test_gpu_check_without_a_gpu_says_so_and_exits_0() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no NVIDIA GPU here" in r.stdout and "--cpu-smoke" in r.stdout
    assert "Traceback" not in r.stderr
