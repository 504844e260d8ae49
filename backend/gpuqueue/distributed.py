"""Public name of the distributed helpers: ``gpuqueue.distributed`` is ``gpuqueue.job.distributed``
(same module); ``python -m gpuqueue.distributed torchrun|ray ...`` runs its ``main``."""

import sys

from .job import distributed as _distributed

if __name__ == "__main__":
    sys.exit(_distributed.main())
sys.modules[__name__] = _distributed
