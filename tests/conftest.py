"""Shared fixtures: real Jupyter servers, kernels and redis-servers that clean up after
themselves. Helpers live in ``tests/helpers/servers.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers.servers import JupyterServer, RedisServer

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jupyter_server_factory(tmp_path: Path) -> Iterator[Callable[..., JupyterServer]]:
    """Start ``jupyter server`` subprocesses: ``jupyter_server_factory(gpus=2)``."""
    servers: list[JupyterServer] = []

    def make(gpus: int = 2, name: str = "server", ready: str = "gpuqueue/api/queue", **kw) -> JupyterServer:
        s = JupyterServer(tmp_path / name, gpus=gpus, **kw)
        servers.append(s)  # registered first, so a server that never answers is still stopped
        return s.start(ready)

    yield make
    for s in servers:
        s.stop()
        s.kill_jobs()


@pytest.fixture
def jupyter_server(jupyter_server_factory: Callable[..., JupyterServer]) -> JupyterServer:
    """One server with 2 declared GPUs in the default pool."""
    return jupyter_server_factory(gpus=2)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start ``redis-server`` processes on free ports: ``redis_factory(appendonly=True)``."""
    servers: list[RedisServer] = []

    def make(name: str = "redis", **kw) -> RedisServer:
        r = RedisServer(tmp_path / name, **kw)
        servers.append(r)
        return r.start()

    yield make
    for r in servers:
        r.kill()
