"""The README's first command runs the demo notebook: it must work as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_notebook_runs_headless(tmp_path):
    r = subprocess.run(
        [sys.executable, "scripts/run_demo.py", "binder/demo.ipynb"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "GPUQUEUE_STATE_DIR": str(tmp_path / "state"), "GPUQUEUE_GPUS": "2"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "back in the notebook" in out and "model" in out
    assert "weights close to the truth: True" in out
    assert "demo-regression" in out  # %gpuqueue list shows the job
