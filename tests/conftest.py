"""Shared fixtures: real Jupyter servers, kernels and redis-servers that clean up after
themselves. Helpers live in ``tests/helpers/servers.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers.servers import JupyterServer, RedisServer

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# The test files that keep one pytest worker busiest (seconds of one worker, from `pytest -n 2
# --dist loadfile --durations=80` on the 2-core VM, 2026-12-06). xdist hands a file to a worker as
# it nears the end of its last one, in the order it gets them (scripts/test.sh:
# --no-loadscope-reorder; by default xdist hands out the files with most tests first), so these go
# first and the many short files fill in after them: a long file handed out last leaves the other
# worker idle while it runs. Roughly longest first, but the two files that start Ray clusters are
# kept apart (the first goes to one worker, with test_types.py after it; test_distributed.py
# follows those two there), as a Ray start on a loaded 2-core machine is slow. Re-measure when the
# suite changes much.
SLOWEST_FIRST = (
    "tests/cluster/test_ray_nodes.py",  # 140 s: a real Ray cluster of two nodes
    "tests/hub/test_hub.py",  # 98 s: a real JupyterHub
    "tests/backend/test_types.py",  # 102 s: mypy over the engine
    "tests/training/test_distributed.py",  # 207 s: DDP ranks and Ray Train jobs
    "tests/cluster/test_reconcile.py",  # 101 s
    "tests/browser/test_notify.py",  # 85 s: chromium
    "tests/scheduler/test_real_trace.py",  # 84 s: ten simulations
    "tests/browser/test_sidebar.py",  # 76 s
    "tests/cluster/test_shared_root.py",  # 69 s
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Hand the slowest files out first (:data:`SLOWEST_FIRST`); each file's tests stay together
    and in their order, and every other file keeps its place."""
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
