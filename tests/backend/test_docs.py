"""The configuration reference is generated from the code and must be current."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    r = subprocess.run([sys.executable, "scripts/gen_config_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_example_queue_file_in_the_reference_is_valid(tmp_path):
    from gpuqueue.queue.config import load_config

    text = (ROOT / "docs" / "config.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "q.toml").write_text(example)
    cfg = load_config(tmp_path / "q.toml")
    assert list(cfg.pools) == ["dev", "prod"] and cfg.users["alice"].weight == 2.0
