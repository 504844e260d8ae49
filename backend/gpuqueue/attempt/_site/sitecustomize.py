"""Put on ``PYTHONPATH`` of command jobs by ``gpuqueue.attempt.launch``: attaches the HuggingFace hook
(``gpuqueue.job.hf.install_hook``) in Python processes of a job, then runs the interpreter's own
``sitecustomize`` if there is one. Does nothing if gpuqueue is not importable there."""

import importlib.machinery
import importlib.util
import os
import sys


def _gpuqueue_hook() -> None:
    if not os.environ.get("GPUQUEUE_JOB_ID"):
        return
    try:
        from gpuqueue.job.hf import install_hook
    except Exception:  # noqa: BLE001 - another interpreter without gpuqueue: nothing to do
        return
    install_hook()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - same as Python's own handling: warn, go on
        print(f"Error in sitecustomize: {e}", file=sys.stderr)


_gpuqueue_hook()
_chain()
