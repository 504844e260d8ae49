"""Version of the jupyter-gpuqueue distribution."""

__version__ = "0.1.0"
