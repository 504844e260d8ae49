"""jupyter-gpuqueue: the Jupyter side (server extension, %%train magic, widgets).

``%load_ext jupyter_gpuqueue`` in a kernel registers the magics; the server extension is
enabled on install.
"""

from __future__ import annotations

from typing import Any

from gpuqueue.__about__ import __version__  # noqa: F401


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import GPUQueueApp

    return [{"module": "jupyter_gpuqueue", "app": GPUQueueApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-gpuqueue"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_gpuqueue``: register ``%%train`` and ``%gpuqueue``."""
    from .magics import GPUQueueMagics

    ipython.register_magics(GPUQueueMagics(ipython))
