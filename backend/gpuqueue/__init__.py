"""gpuqueue: the engine (job model, scheduler, store, executors, job-side API).

The job-side API is importable from the top level and costs nothing until used (no torch or
transformers is imported by ``import gpuqueue``)::

    gpuqueue.log(step=..., loss=...)      gpuqueue.progress(done, total)
    gpuqueue.should_stop()                gpuqueue.Checkpointer(every_steps=..., ...)
    gpuqueue.GpuqueueCallback             (transformers TrainerCallback)
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "log": ("job.jobapi", "log"),
    "progress": ("job.jobapi", "progress"),
    "flush": ("job.jobapi", "flush"),
    "should_stop": ("job.jobapi", "should_stop"),
    "in_job": ("job.jobapi", "in_job"),
    "rank": ("job.jobapi", "rank"),
    "is_main_process": ("job.jobapi", "is_main_process"),
    "Checkpointer": ("job.checkpoint", "Checkpointer"),
    "CheckpointInfo": ("job.checkpoint", "CheckpointInfo"),
    "GpuqueueCallback": ("job.hf", "GpuqueueCallback"),
    "JobStopped": ("job.channel", "JobStopped"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import the job-side API on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpuqueue' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
