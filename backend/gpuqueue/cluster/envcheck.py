"""The start of a cluster process (``gpuqueue scheduler|api|worker``): its logging, and a
misspelt ``GPUQUEUE_*`` variable in its environment named in its log (``GPUQUEUE_CONIFG`` left the
scheduler without its pools, ``GPUQUEUE_SHARED_DIRS`` a worker without its shared checkpoint
root, and nothing said so)."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from typing import Any, Mapping, Optional

# every GPUQUEUE_* name the sources and scripts/*.sh read or set (tests/cluster/test_admin_setup.py
# keeps it whole): GPUQUEUE_TEST_WORKERS (README) and GPUQUEUE_TORCH_VERSION are the scripts', which
# a shell that also starts the services may hold
KNOWN = frozenset("""
GPUQUEUE_API_TOKEN GPUQUEUE_API_URL GPUQUEUE_ATTEMPT GPUQUEUE_ATTEMPT_DIR GPUQUEUE_CELERY_EVENTS
GPUQUEUE_CHECKPOINT_DIR GPUQUEUE_CONFIG GPUQUEUE_EVENT_FD GPUQUEUE_GPUS GPUQUEUE_GRAD_CHECKPOINTING
GPUQUEUE_HF_HOOK GPUQUEUE_JOB_DIR GPUQUEUE_JOB_ID GPUQUEUE_LAUNCHER GPUQUEUE_LOG_FORMAT GPUQUEUE_LOG_LEVEL
GPUQUEUE_MAX_OUTPUT_MB GPUQUEUE_MAX_RUNTIME_S GPUQUEUE_METRICS_JOB_NAMES GPUQUEUE_METRICS_MAX_JOBS GPUQUEUE_METRICS_MAX_NAMES
GPUQUEUE_METRICS_PUBLIC GPUQUEUE_NODE GPUQUEUE_NODE_ENV GPUQUEUE_NUM_GPUS GPUQUEUE_PASS_ENV GPUQUEUE_PLACEMENT
GPUQUEUE_PRECISION GPUQUEUE_RANK GPUQUEUE_RAY_ADDRESS GPUQUEUE_RAY_CPUS GPUQUEUE_RAY_DIR GPUQUEUE_RAY_HEAD
GPUQUEUE_RAY_JOIN_WAIT_S GPUQUEUE_RAY_NODE_ID GPUQUEUE_RAY_NODE_IP GPUQUEUE_RAY_WORKER GPUQUEUE_REDIS_URL GPUQUEUE_RESUME_FROM GPUQUEUE_SHARED_DIR GPUQUEUE_STATE_DIR
GPUQUEUE_TEST_WORKERS GPUQUEUE_TOKEN GPUQUEUE_TORCH_VERSION GPUQUEUE_URL GPUQUEUE_USAGE GPUQUEUE_VIEW
""".split())


def unknown_names(env: Optional[Mapping[str, str]] = None) -> list[str]:
    """One line per ``GPUQUEUE_*`` name in ``env`` (default: this process's) that gpuqueue does
    not read, with the known name it is closest to."""
    env = os.environ if env is None else env
    out = []
    for name in sorted(k for k in env if k.startswith("GPUQUEUE_") and k not in KNOWN):
        close = difflib.get_close_matches(name, sorted(KNOWN), n=1, cutoff=0.75)
        out.append(f"{name} is no gpuqueue setting and is ignored" + (f": did you mean {close[0]}?" if close else ""))
    return out


def warn_unknown(log: logging.Logger) -> None:
    """Log a warning for each name of ``unknown_names``."""
    for line in unknown_names():
        log.warning("environment: %s", line)


def start_process(command: str, log: logging.Logger, level: str, **where: Any) -> bool:
    """Set up the logging of ``gpuqueue COMMAND`` (``where``: its component, node) and warn of
    unknown ``GPUQUEUE_*`` names. False (after one line on stderr naming the fix) when the log
    level or ``$GPUQUEUE_LOG_FORMAT`` cannot be read: the command then exits 2."""
    from ..observability.logs import setup_logging

    try:
        setup_logging(level=level.upper(), **where)
    except ValueError as e:
        print(f"gpuqueue {command}: {e} (--log-level; $GPUQUEUE_LOG_FORMAT: json, human or auto)", file=sys.stderr)
        return False
    warn_unknown(log)
    return True
