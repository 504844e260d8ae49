"""Test helpers that start real processes: a Jupyter server, kernels, redis-server."""
