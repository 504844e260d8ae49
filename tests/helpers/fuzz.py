"""Schemathesis over docs/openapi.yaml against a running API (embedded or cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"

# `follow=1` streams until the job ends (the fuzzer's jobs may wait for GPUs for ever): the
# stream is tested in tests/jupyter/test_rest_api.py, the fuzzer asks for the JSON answer.
CONFIG = """
[parameters]
"query.follow" = "0"
"""


def fuzz(api_url: str, token: str, workdir: Path, max_examples: int = 12, seed: int = 1,
         timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run every phase of ``schemathesis run`` (examples, coverage, fuzzing, stateful, both
    valid and invalid data) with a bounded number of examples per operation, checking that no
    answer is a 5xx and that each answer (status, content type, body) is the one the spec
    documents. ``api_url`` ends in ``gpuqueue/api``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", str(SPEC),
         "--url", api_url, "-H", f"Authorization: token {token}",
         "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
         "--max-examples", str(max_examples), "--seed", str(seed), "--workers", "1",
         "--request-timeout", "20", "--no-color"],
        cwd=workdir, capture_output=True, text=True, timeout=timeout,
    )
