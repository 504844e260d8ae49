"""How a job attempt is launched: the argv, environment and working directory the runner uses.

One place for it, shared by the embedded executor and the cluster worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .distributed import launch_argv
from .models import JobSpec


def build_launch(
    job_id: str,
    spec: JobSpec,
    job_dir: Path,
    attempt_dir: Path,
    attempt: int,
    devices: list[int],
    node: str,
) -> dict[str, Any]:
    """The ``launch.json`` content for one attempt.

    ``devices`` are the physical GPU indices this attempt may use; the job sees them (and only
    them) through ``CUDA_VISIBLE_DEVICES``. A ``--gpus 0`` job sees none and runs on the CPU.
    """
    python = spec.python or sys.executable
    if spec.kind == "cell":
        argv = [python, "-m", "gpuqueue.jobmain", str(job_dir)]
    else:
        argv = list(spec.command or [])
    # several processes: torchrun (one node) or Ray Train (several nodes); see gpuqueue.distributed
    argv = launch_argv(spec.kind, argv, spec.gpus, spec.nodes, spec.env, python)
    env = dict(spec.env)
    if spec.kind == "command" and spec.env.get("GPUQUEUE_HF_HOOK", "1") != "0":
        # Python commands get the transformers hook through a chained sitecustomize (gpuqueue.hf)
        site = str(Path(__file__).resolve().parent / "_site")
        existing = spec.env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        env["PYTHONPATH"] = site + (os.pathsep + existing if existing else "")
    env.update(
        {
            "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),
            "GPUQUEUE_JOB_ID": job_id,
            "GPUQUEUE_ATTEMPT": str(attempt),
            "GPUQUEUE_JOB_DIR": str(job_dir),
            "GPUQUEUE_ATTEMPT_DIR": str(attempt_dir),
            "GPUQUEUE_NODE": node,
            "GPUQUEUE_NUM_GPUS": str(len(devices)),
        }
    )
    if spec.precision:
        env["GPUQUEUE_PRECISION"] = spec.precision
    if spec.grad_checkpointing:
        env["GPUQUEUE_GRAD_CHECKPOINTING"] = "1"
    if spec.resume_from:
        env["GPUQUEUE_RESUME_FROM"] = spec.resume_from
    return {"argv": argv, "env": env, "cwd": spec.cwd}


def runner_env() -> dict[str, str]:
    """The environment to start a runner in: this one, with gpuqueue importable (the runner
    runs with this interpreter)."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
