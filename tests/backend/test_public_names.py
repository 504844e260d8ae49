"""The job-side names users write keep working after the engine moved into folders: the lazy
top-level API, ``gpuqueue.hf``, ``gpuqueue.distributed`` and ``python -m gpuqueue.distributed``."""

from __future__ import annotations

import subprocess
import sys

import gpuqueue


def test_top_level_job_api_resolves() -> None:
    for name in gpuqueue.__all__:
        assert getattr(gpuqueue, name) is not None, name


def test_hf_and_distributed_are_the_job_modules() -> None:
    import gpuqueue.distributed
    import gpuqueue.hf
    from gpuqueue.job import distributed, hf

    assert gpuqueue.hf is hf and gpuqueue.distributed is distributed
    from gpuqueue.hf import GpuqueueCallback, resume_checkpoint  # noqa: F401  (as docs/training.md)
    from gpuqueue.distributed import autocast, init  # noqa: F401


def test_python_m_gpuqueue_distributed_runs_its_main() -> None:
    out = subprocess.run([sys.executable, "-m", "gpuqueue.distributed", "torchrun", "--nproc", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give the command to run after --" in out.stderr
