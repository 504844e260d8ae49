"""``python -m gpuqueue.simulate``: the same as ``gpuqueue simulate``."""

import sys

from .command import cli_main

sys.exit(cli_main(sys.argv[1:]))
