"""Finding this machine's GPUs: NVML when present, else a declared inventory."""

from __future__ import annotations

import logging
import os
from typing import Optional

log = logging.getLogger(__name__)


def nvml_gpu_count() -> Optional[int]:
    """Number of GPUs NVML sees, or None when NVML (driver or nvidia-ml-py) is missing."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - pynvml raises NVMLError_* for "no driver"
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def local_gpu_count(declared: Optional[int] = None) -> int:
    """GPUs to schedule on this machine.

    Order: ``declared`` (a traitlet or CLI flag), then ``GPUQUEUE_GPUS``, then NVML, then 0.
    A declared count is how a machine without GPUs pretends to have some (tests, demos).
    """
    if declared is not None:
        return declared
    env = os.environ.get("GPUQUEUE_GPUS")
    if env not in (None, ""):
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"GPUQUEUE_GPUS={env!r} is not a whole number, e.g. GPUQUEUE_GPUS=4") from None
        if n < 0:
            raise ValueError(f"GPUQUEUE_GPUS={env!r} must be 0 or more")
        return n
    found = nvml_gpu_count()
    return found or 0
