"""Public name of the HuggingFace hook: ``gpuqueue.hf`` is ``gpuqueue.job.hf`` (same module)."""

import sys

from .job import hf as _hf

sys.modules[__name__] = _hf
