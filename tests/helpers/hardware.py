"""This machine's NVIDIA GPUs, probed as the product probes them (NVML, ``gpuqueue.attempt.gpus``).

Most tests declare their GPUs (``GPUQUEUE_GPUS``) and run the same with or without real ones.
The few that check what happens *without* an NVIDIA driver use ``needs_no_nvidia_gpu``: on a GPU
node they are skipped, and say why."""

from __future__ import annotations

from typing import Optional

import pytest

from gpuqueue.attempt.gpus import nvml_gpu_count

NVML_GPUS: Optional[int] = nvml_gpu_count()
"""GPUs NVML sees; None when NVML (the driver's library or nvidia-ml-py) is missing."""

NVML_UP = NVML_GPUS is not None

needs_no_nvidia_gpu = pytest.mark.skipif(
    NVML_UP,
    reason=f"checks the behaviour without an NVIDIA driver; NVML answers here ({NVML_GPUS} GPUs)",
)
